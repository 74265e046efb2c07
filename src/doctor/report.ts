// `ambpf doctor`'s checks, run in order, each a row: what, present or not, detail, and for a
// missing kernel feature the first Linux version that has it.
import { probeProgType, probeMapType, probeHelperByLoad } from '../libbpf/index.ts';
import { PROG_FEATURES, MAP_FEATURES, HELPER_FEATURES, TCX_SINCE, BTF_SINCE } from './features.ts';
import { findPrebuilt } from '../bpf/build.ts';
import { kernelMemoryLocked } from '../bpf/lockdown.ts';
import { kernelRelease, hasKernelBtf, mountsOf, clangVersion, versionAtLeast, VMLINUX_BTF } from './system.ts';
import { DEFAULT_STATE_FILE } from '../status/state-file.ts';
import { probeTcx, type TcxProbe } from './tcx.ts';
import { probeSkMsgLink, type SkMsgLinkProbe } from './skmsg.ts';
import { kernelChoices, MIN_KERNEL, type KernelChoice } from './choices.ts';
import { capacityCheck, sysctlChecks, ztunnelCgroupCheck, type CapacityOptions } from './node.ts';

export interface Check {
  group: 'system' | 'program' | 'map' | 'helper' | 'link' | 'tool' | 'sysctl' | 'capacity' | 'ztunnel';
  name: string;
  ok: boolean;
  detail: string;
  /** First kernel with the feature (kernel features only). */
  since?: string;
  /** A warning about the node's settings (node.ts): shown, but `ok` and the exit code ignore it. */
  advisory?: boolean;
}

export interface DoctorReport {
  kernel: string;
  ok: boolean;
  checks: Check[];
  /** How the loader attaches on this kernel (tcx or clsact, sk_msg method) and the minimum kernel. */
  choices: KernelChoice[];
}

/** A probe that could not even run counts as "not supported", with the reason. */
function safeProbe<T extends { supported: boolean; detail: string }>(
  probe: () => T,
): T | { supported: false; detail: string } {
  try {
    return probe();
  } catch (err) {
    return { supported: false, detail: `probe failed: ${(err as Error).message.split('\n')[0]}` };
  }
}

function guarded(
  group: Check['group'],
  name: string,
  since: string | undefined,
  probe: () => { ok: boolean; detail: string },
): Check {
  try {
    const r = probe();
    return { group, name, ok: r.ok, detail: r.detail, ...(since ? { since } : {}) };
  } catch (err) {
    return {
      group,
      name,
      ok: false,
      detail: `probe failed: ${(err as Error).message.split('\n')[0]}`,
      ...(since ? { since } : {}),
    };
  }
}

export interface DoctorOptions extends CapacityOptions {
  /** The loader's state file: what it found about ztunnel's cgroup lies beside it. */
  readonly stateFile?: string;
}

export function runDoctor(node: DoctorOptions = { bpffs: '/sys/fs/bpf/ambpf' }): DoctorReport {
  const kernel = kernelRelease();
  const checks: Check[] = [];
  checks.push({
    group: 'system',
    name: 'kernel',
    ok: versionAtLeast(kernel, MIN_KERNEL),
    detail: kernel,
    since: MIN_KERNEL,
  });
  checks.push({
    group: 'system',
    name: 'BTF',
    ok: hasKernelBtf(),
    detail: hasKernelBtf() ? VMLINUX_BTF : `${VMLINUX_BTF} is missing (CONFIG_DEBUG_INFO_BTF)`,
    since: BTF_SINCE,
  });
  const bpffs = mountsOf('bpf');
  checks.push({
    group: 'system',
    name: 'bpffs',
    ok: bpffs.length > 0,
    detail: bpffs.length ? bpffs.join(', ') : 'not mounted: mount -t bpf bpf /sys/fs/bpf',
  });
  const cg2 = mountsOf('cgroup2');
  checks.push({
    group: 'system',
    name: 'cgroup v2',
    ok: cg2.length > 0,
    detail: cg2.length ? cg2.join(', ') : 'no cgroup2 mount in /proc/mounts',
  });
  for (const f of PROG_FEATURES) {
    checks.push(guarded('program', f.type, f.since, () => ({ ok: probeProgType(f.type), detail: f.why })));
  }
  for (const f of MAP_FEATURES) {
    checks.push(guarded('map', f.type, f.since, () => ({ ok: probeMapType(f.type), detail: f.why })));
  }
  for (const f of HELPER_FEATURES) {
    // libbpf 1.1's helper probe misreads newer verifiers: a real load decides.
    checks.push(
      guarded('helper', `${f.helper} in ${f.prog}`, f.since, () => ({
        ok: probeHelperByLoad(f.prog, f.helper),
        detail: `bpf_${f.helper}`,
      })),
    );
  }
  const tcx: TcxProbe = safeProbe(probeTcx);
  checks.push({
    group: 'link',
    name: 'tcx',
    ok: tcx.supported,
    detail: tcx.detail + (tcx.supported ? '' : ' (ambpf falls back to clsact)'),
    since: TCX_SINCE,
  });
  const skMsgLink: SkMsgLinkProbe = safeProbe(probeSkMsgLink);
  const clang = clangVersion();
  // clang is only needed on a cache miss: an image that ships the objects for its sources has no
  // compiler, and that is fine.
  const prebuilt = clang === null ? findPrebuilt() : undefined;
  checks.push({
    group: 'tool',
    name: 'clang',
    ok: clang !== null || prebuilt !== undefined,
    detail:
      clang ??
      (prebuilt
        ? `not installed; prebuilt objects for these sources in ${prebuilt}`
        : 'not found and no prebuilt objects for these sources: apt-get install clang, or run `ambpf build` where clang exists'),
  });
  checks.push(...sysctlChecks(), capacityCheck(node), ztunnelCgroupCheck(node.stateFile ?? DEFAULT_STATE_FILE));
  return {
    kernel,
    ok: checks.every((c) => c.ok || c.advisory),
    checks,
    choices: kernelChoices(kernel, tcx, skMsgLink, kernelMemoryLocked()),
  };
}

/** The table printed by `ambpf doctor`. */
export function renderReport(r: DoctorReport): string {
  const rows = r.checks.map((c) => [c.group, c.name, c.ok ? 'yes' : c.advisory ? 'WARN' : 'MISSING', c.detail]);
  const head = ['GROUP', 'FEATURE', 'PRESENT', 'DETAIL'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: readonly string[]): string =>
    cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  const out = [line(head), ...rows.map(line)];
  out.push('', `Loader choices on Linux ${r.kernel}:`);
  const w = Math.max(...r.choices.map((c) => c.what.length));
  for (const c of r.choices) out.push(`  ${c.what.padEnd(w)}  ${c.choice}: ${c.why}`);
  const missing = r.checks.filter((c) => !c.ok && !c.advisory);
  const warned = r.checks.filter((c) => !c.ok && c.advisory);
  out.push('');
  if (warned.length > 0) {
    out.push(`${warned.length} warning${warned.length === 1 ? '' : 's'} about this node's settings:`);
    for (const c of warned) out.push(`  - ${c.group} ${c.name}: ${c.detail}`);
    out.push('');
  }
  if (missing.length === 0) out.push(`All ${r.checks.length - warned.length} checks passed on Linux ${r.kernel}.`);
  else {
    out.push(`${missing.length} missing:`);
    for (const c of missing)
      out.push(
        `  - ${c.group} ${c.name}${c.since ? ` (needs Linux ${c.since} or newer; this is ${r.kernel})` : ''}: ${c.detail}`,
      );
  }
  return out.join('\n') + '\n';
}
