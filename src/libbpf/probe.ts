// Kernel feature probes through libbpf (what `bpftool feature probe` does), for `ambpf doctor`.
// libbpf_probe_* return 1 (supported), 0 (not), or -errno when the probe itself could not run.
import { release } from 'node:os';
import { raw } from './ffi.ts';
import { kernelVersion, versionAtLeast } from './kernel-version.ts';
import { check } from './errors.ts';
import { RawProgram, MOV64_IMM, CALL, EXIT } from './rawprog.ts';
import { PROG_TYPES, MAP_TYPES, HELPERS, type ProgTypeName, type MapTypeName, type HelperName } from './constants.ts';

export function probeProgType(type: ProgTypeName): boolean {
  return (
    check('libbpf_probe_bpf_prog_type', raw.libbpf_probe_bpf_prog_type(PROG_TYPES[type], null) as number, {
      hint: `program type ${type}`,
    }) === 1
  );
}

export function probeMapType(type: MapTypeName): boolean {
  return (
    check('libbpf_probe_bpf_map_type', raw.libbpf_probe_bpf_map_type(MAP_TYPES[type], null) as number, {
      hint: `map type ${type}`,
    }) === 1
  );
}

/**
 * Whether programs of progType may call the helper. libbpf 1.1 decides from the verifier's wording,
 * which changed in newer kernels (6.12+ answer "yes" wrongly through this probe): doctor confirms
 * with a real load where it matters.
 */
export function probeHelper(progType: ProgTypeName, helper: HelperName): boolean {
  return (
    check(
      'libbpf_probe_bpf_helper',
      raw.libbpf_probe_bpf_helper(PROG_TYPES[progType], HELPERS[helper], null) as number,
      { hint: `helper ${helper} in ${progType}` },
    ) === 1
  );
}

/** Verifier messages that mean "this program type may not call that helper", across kernel versions. */
const HELPER_REFUSED = /invalid func |unknown func |cannot use helper|helper call is not allowed/;

/**
 * Helper support decided by a real load: `r1..r5 = 0; call helper; exit`. The verifier checks
 * whether the helper exists for the program type before looking at its arguments, so any refusal
 * other than the "not allowed" wording (a bad argument) still means the helper is available.
 */
export function probeHelperByLoad(progType: ProgTypeName, helper: HelperName): boolean {
  const r = RawProgram.tryLoad(progType, [
    MOV64_IMM(1, 0),
    MOV64_IMM(2, 0),
    MOV64_IMM(3, 0),
    MOV64_IMM(4, 0),
    MOV64_IMM(5, 0),
    CALL(HELPERS[helper]),
    MOV64_IMM(0, 0),
    EXIT(),
  ]);
  r.prog?.close();
  if (r.prog) return true;
  return !HELPER_REFUSED.test(r.log);
}

/**
 * Whether the running kernel is at least major.minor by its release string. For features with no
 * cheap probe (a context field of one program type); a distribution kernel that backported one is
 * answered "no", which callers must treat as the safe answer.
 */
export function kernelAtLeast(major: number, minor: number, rel = release()): boolean {
  const v = kernelVersion(rel);
  return v !== undefined && versionAtLeast(v, major, minor);
}
