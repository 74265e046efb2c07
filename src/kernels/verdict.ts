// Turn parsed console results into the matrix: one cell per program (or functional check) and kernel,
// and the list of everything that is not as it must be. ambpf's programs must pass everywhere; the
// checker's self-test fixture must answer exactly as each kernel behaves
// (docs/kernel-facts.md#what-each-kernel-has-and-lacks), which proves the checker can see a rejection and
// really takes each attach path.
import { failureReason, type KernelRun, type ProgramResult } from './results.ts';
import { kernelVersion, versionAtLeast, type KernelVersion } from '../libbpf/kernel-version.ts';
import { LOCAL_ROUTE_KERNEL } from '../bpf/schema.ts';

export const SELFTEST_OBJECT = 'checker-selftest';

export interface Cell {
  readonly pass: boolean;
  /** The check said it does not apply to this kernel (asExpected says whether that is its known answer). */
  readonly na?: boolean;
  /** What the table shows: the attach method for a pass, the reason for a failure. */
  readonly text: string;
  /** This cell is what it must be (a pass for ambpf, the known answer for the self-test). */
  readonly asExpected: boolean;
}

export interface Row {
  readonly key: string;
  readonly object: string;
  readonly program: string;
  readonly kind: 'program' | 'func';
  readonly cells: Map<string, Cell>;
}

/** The self-test's known answers (docs/kernel-facts.md#what-each-kernel-has-and-lacks), by kernel version. */
export function selftestExpectation(program: string, v: KernelVersion): { pass: boolean; attachVia?: RegExp } {
  switch (program) {
    case 'st_tc_netns_cookie':
      return { pass: versionAtLeast(v, 6, 18) };
    case 'st_sockops_netns_cookie':
      return { pass: versionAtLeast(v, 5, 15) };
    case 'st_tc_ingress':
      return { pass: true, attachVia: versionAtLeast(v, 6, 6) ? /^tcx link/ : /^clsact/ };
    default:
      return { pass: true };
  }
}

/**
 * Functional checks that do not apply before a kernel version: there, and only there, "na" is the
 * known answer (anywhere else it is a failure, as a check that did not run).
 */
const NOT_BEFORE: ReadonlyMap<string, KernelVersion> = new Map([
  // The kept destination (kernels/checker/keep.c) needs sk_lookup's ingress_ifindex.
  [
    "inpod/a kept destination reaches ztunnel's 15001 over lo, SO_ORIGINAL_DST from its own address",
    LOCAL_ROUTE_KERNEL,
  ],
  [
    "inpod/a kept destination without ztunnel's 15001: no reset, its SYN retransmitted reaches ztunnel once back",
    LOCAL_ROUTE_KERNEL,
  ],
]);

export function notApplicableExpected(key: string, v: KernelVersion | undefined): boolean {
  const since = NOT_BEFORE.get(key);
  return since !== undefined && v !== undefined && !versionAtLeast(v, since[0], since[1]);
}

function programCell(run: KernelRun, p: ProgramResult | undefined): { pass: boolean; text: string; na?: boolean } {
  if (!p) {
    return {
      pass: false,
      text: run.done ? 'no result' : `guest did not report: ${run.consoleTail.at(-1) ?? 'no output'}`,
    };
  }
  if (p.func)
    return p.func.status === 'na'
      ? { pass: false, na: true, text: p.func.detail }
      : { pass: p.func.status === 'ok', text: p.func.detail };
  if (p.load?.status !== 'ok') {
    const reason = failureReason(p);
    return { pass: false, text: `load: ${p.load?.detail ?? 'no result'}${reason ? ` — ${reason}` : ''}` };
  }
  if (p.attach?.status !== 'ok') {
    const reason = failureReason(p);
    return { pass: false, text: `attach: ${p.attach?.detail ?? 'no result'}${reason ? ` — ${reason}` : ''}` };
  }
  return { pass: true, text: p.attach.detail };
}

export function buildRows(runs: readonly KernelRun[]): Row[] {
  const rows = new Map<string, Row>();
  for (const run of runs) {
    for (const [key, p] of run.programs) {
      if (!p.load && !p.attach && !p.func) continue; // VLOG-only entries (setup noise)
      if (!rows.has(key)) {
        rows.set(key, {
          key,
          object: p.object,
          program: p.program,
          kind: p.func ? 'func' : 'program',
          cells: new Map(),
        });
      }
    }
  }
  for (const row of rows.values()) {
    for (const run of runs) {
      const { pass, text, na } = programCell(run, run.programs.get(row.key));
      let asExpected = pass;
      if (na) {
        asExpected = notApplicableExpected(row.key, kernelVersion(run.release));
      } else if (row.object === SELFTEST_OBJECT) {
        const v = kernelVersion(run.release);
        const want = v ? selftestExpectation(row.program, v) : undefined;
        asExpected = want !== undefined && want.pass === pass && (!want.attachVia || want.attachVia.test(text));
      }
      row.cells.set(run.kernel, { pass, text, asExpected, ...(na ? { na } : {}) });
    }
  }
  return [...rows.values()].sort((a, b) =>
    a.kind === b.kind ? a.key.localeCompare(b.key) : a.kind === 'program' ? -1 : 1,
  );
}

/** One sentence per thing that is wrong; empty when the matrix is green. */
export function problems(runs: readonly KernelRun[], rows: readonly Row[]): string[] {
  const out: string[] = [];
  for (const run of runs) {
    if (!run.done)
      out.push(`${run.kernel}: the checker did not finish (last console line: ${run.consoleTail.at(-1) ?? 'none'})`);
    for (const e of run.setupErrors) out.push(`${run.kernel}: ${e}`);
  }
  for (const row of rows) {
    for (const [kernel, cell] of row.cells) {
      if (cell.asExpected) continue;
      out.push(
        row.object === SELFTEST_OBJECT
          ? `${kernel}: checker self-test ${row.program} gave "${cell.pass ? 'pass' : 'fail'}: ${cell.text}", not the known answer for this kernel`
          : `${kernel}: ${row.key} fails: ${cell.text}`,
      );
    }
  }
  return out;
}
