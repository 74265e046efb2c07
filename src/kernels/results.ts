// Parse what the checker printed on a guest's serial console (kernels/checker/report.h) into one
// KernelRun per kernel. The console also carries kernel messages and, for a guest that died, nothing
// at all: a run without its DONE line is itself a failure the table must show.

/** 'na': a functional check that does not apply to this kernel (verdict.ts knows where that is right). */
export type StageStatus = 'ok' | 'fail' | 'na' | 'yes' | 'no';

export interface StageResult {
  readonly status: StageStatus;
  readonly detail: string;
}

export interface ProgramResult {
  readonly object: string;
  readonly program: string;
  load?: StageResult;
  attach?: StageResult;
  /** Feature probes learned while attaching ("tcx link" -> yes/no); facts, not verdicts. */
  readonly probes: Map<string, StageResult>;
  /** Functional check (stage "func"): `program` is then the check's name. */
  func?: StageResult;
  /** Last lines of the verifier or libbpf log, for a failure. */
  readonly log: string[];
}

export interface KernelRun {
  /** Matrix column: "5.10", "6.1", "6.12", "host". */
  readonly kernel: string;
  release: string | undefined;
  /** Checker reached its end (DONE line). */
  done: boolean;
  /** Setup failures and open failures not tied to one program. */
  readonly setupErrors: string[];
  readonly programs: Map<string, ProgramResult>;
  /** Last console lines, to explain a guest that never reported. */
  readonly consoleTail: string[];
}

const STATUSES: readonly string[] = ['ok', 'fail', 'na', 'yes', 'no'];

function isStatus(s: string): s is StageStatus {
  return STATUSES.includes(s);
}

export function programKey(object: string, program: string): string {
  return `${object}/${program}`;
}

function entry(run: KernelRun, object: string, program: string): ProgramResult {
  const key = programKey(object, program);
  let p = run.programs.get(key);
  if (!p) {
    p = { object, program, probes: new Map(), log: [] };
    run.programs.set(key, p);
  }
  return p;
}

export function parseConsole(kernel: string, text: string): KernelRun {
  const run: KernelRun = {
    kernel,
    release: undefined,
    done: false,
    setupErrors: [],
    programs: new Map(),
    consoleTail: [],
  };
  const lines = text.split(/\r?\n/);
  run.consoleTail.push(...lines.filter((l) => l.trim() !== '').slice(-15));
  for (const raw of lines) {
    // A kernel message can land in front of our line on the shared console: find our marker.
    const at = raw.search(/(KERNEL|RESULT|VLOG|DONE)\t/);
    if (at < 0) continue;
    const f = raw.slice(at).split('\t');
    const [tag = '', a = '', b = '', c = '', d = ''] = f;
    const rest = f.slice(5).join(' ');
    if (tag === 'KERNEL') run.release = a;
    else if (tag === 'DONE') run.done = true;
    else if (tag === 'VLOG') entry(run, a, b).log.push(f.slice(3).join(' '));
    else if (tag === 'RESULT') {
      if (!isStatus(d)) continue;
      const result: StageResult = { status: d, detail: rest };
      if (a === '-' || c === 'setup' || c === 'open') {
        if (d === 'fail') run.setupErrors.push(`${a === '-' ? '' : `${a}: `}${rest}`);
        continue;
      }
      const p = entry(run, a, b);
      if (c === 'load') p.load = result;
      else if (c === 'attach') p.attach = result;
      else if (c === 'func') p.func = result;
      else if (c === 'probe') p.probes.set(rest.split(':')[0] ?? rest, result);
    }
  }
  return run;
}

/** Verifier noise that never explains a rejection. */
const NOISE =
  /^(processed \d+ insns|verification time|stack depth|-- (BEGIN|END) PROG LOAD LOG --|libbpf: prog '[^']*': failed to load)/;

/** The one line that says why: the last informative verifier/libbpf line. */
export function failureReason(p: ProgramResult): string {
  const informative = p.log.map((l) => l.trim()).filter((l) => l !== '' && !NOISE.test(l));
  return informative.at(-1) ?? '';
}
