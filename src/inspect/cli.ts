// `ambpf map …` / `ambpf prog …` argument handling the way bpftool's main.c does it: getopt-style
// options anywhere among the words (-j, -p, -f and their long forms, bundled like -jp), subcommands
// chosen by prefix in bpftool's table order (`sh` is show, `d` is dump), help on stderr (or `null`
// in JSON mode), and bpftool's exit codes: the command's int return value as an exit status, so -1
// is 255 and a failed lookup's -ENOENT is 254.
import { InspectContext, isPrefix, UsageExit, type GlobalOptions } from './context.ts';
import type { InspectKernel } from './kernel-types.ts';
import type { Command } from '../cli/command.ts';
import { mapDump, mapGetNext, mapLookup } from './map-dump.ts';
import { mapShow } from './map-show.ts';
import { progShow } from './prog-show.ts';
import { Args } from './selectors.ts';

export type ObjectKind = 'map' | 'prog';

export interface InspectResult {
  readonly stdout: Buffer;
  readonly stderr: Buffer;
  readonly exitCode: number;
}

const SHORT = new Set(['j', 'p', 'f', 'd', 'm', 'n', 'L', 'l']);
const LONG: readonly [string, string][] = [
  ['json', 'j'],
  ['pretty', 'p'],
  ['bpffs', 'f'],
  ['mapcompat', 'm'],
  ['nomount', 'n'],
  ['debug', 'd'],
  ['use-loader', 'L'],
  ['legacy', 'l'],
];

interface Parsed {
  readonly opts: GlobalOptions;
  readonly words: string[];
  /** The first option getopt would reject, with JSON mode as it stood when it was met. */
  readonly bad?: { readonly option: string; readonly json: boolean; readonly pretty: boolean };
}

/** getopt_long with permutation: options are collected from anywhere until `--`. */
export function parseOptions(argv: readonly string[]): Parsed {
  let json = false;
  let pretty = false;
  let showPinned = false;
  const words: string[] = [];
  const apply = (c: string): void => {
    if (c === 'p') pretty = json = true;
    else if (c === 'j') json = true;
    else if (c === 'f') showPinned = true;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      words.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const name = a.slice(2);
      const hits = LONG.filter(([l]) => l === name || l.startsWith(name));
      const exact = hits.find(([l]) => l === name);
      const hit = exact ?? (hits.length === 1 ? hits[0] : undefined);
      if (!hit || name === '') return { opts: { json, pretty, showPinned }, words, bad: { option: a, json, pretty } };
      apply(hit[1]);
      continue;
    }
    if (a.startsWith('-') && a.length > 1) {
      for (const c of a.slice(1)) {
        if (!SHORT.has(c)) return { opts: { json, pretty, showPinned }, words, bad: { option: a, json, pretty } };
        apply(c);
      }
      continue;
    }
    words.push(a);
  }
  return { opts: { json, pretty, showPinned }, words };
}

/**
 * The selector `map dump` uses when given none. bpftool refuses a bare `map dump` (usage, exit 255),
 * so defaulting there changes no form bpftool accepts.
 */
export const DEFAULT_DUMP: readonly string[] = ['name', 'ambpf_pods'];

const MAP_HELP = (bin: string): string =>
  `Usage: ${bin} map { show | list }   [MAP]\n` +
  `       ${bin} map dump       [MAP]\n` +
  `       ${bin} map lookup     MAP [key DATA]\n` +
  `       ${bin} map getnext    MAP [key DATA]\n` +
  `       ${bin} map peek       MAP\n` +
  `       ${bin} map help\n` +
  '\n' +
  '       MAP := { id MAP_ID | pinned FILE | name MAP_NAME }\n' +
  '       DATA := { [hex] BYTES }\n' +
  '       OPTIONS := { {-j|--json} [{-p|--pretty}] | {-f|--bpffs} }\n' +
  '\n' +
  '       Output is identical to bpftool v7.1 for the same arguments. ambpf only inspects: use\n' +
  '       bpftool to create, update, delete or pin.\n' +
  '       One addition where bpftool would only print this help: `map dump` without MAP dumps\n' +
  `       ${DEFAULT_DUMP.join(' ')} (the ambient-pod map; \`ambpf pods\` decodes it with pod names).\n`;

const PROG_HELP = (bin: string): string =>
  `Usage: ${bin} prog { show | list } [PROG]\n` +
  `       ${bin} prog help\n` +
  '\n' +
  '       PROG := { id PROG_ID | pinned FILE | tag PROG_TAG | name PROG_NAME }\n' +
  '       OPTIONS := { {-j|--json} [{-p|--pretty}] | {-f|--bpffs} }\n' +
  '\n' +
  '       Output is identical to bpftool v7.1 for the same arguments. ambpf only inspects: use\n' +
  '       bpftool to load, attach, dump or run programs.\n';

export function helpText(kind: ObjectKind, bin = 'ambpf'): string {
  return kind === 'map' ? MAP_HELP(bin) : PROG_HELP(bin);
}

type Handler = (ctx: InspectContext, k: InspectKernel, args: Args, usage: () => never) => number;

/** bpftool's table for the object, in its order (prefix matching picks the first hit). */
const MAP_COMMANDS: readonly [string, Handler | null][] = [
  ['show', (c, k, a) => mapShow(c, k, a)],
  ['list', (c, k, a) => mapShow(c, k, a)],
  ['help', null],
  ['dump', (c, k, a, u) => mapDump(c, k, a.count === 0 ? new Args(DEFAULT_DUMP) : a, u)],
  ['update', null],
  ['lookup', mapLookup],
  ['getnext', mapGetNext],
  ['delete', null],
  ['pin', null],
  ['event_pipe', null],
  ['create', null],
  ['peek', mapLookup],
  ['push', null],
  ['enqueue', null],
  ['pop', null],
  ['dequeue', null],
  ['freeze', null],
];

const PROG_COMMANDS: readonly [string, Handler | null][] = [
  ['show', (c, k, a) => progShow(c, k, a)],
  ['list', (c, k, a) => progShow(c, k, a)],
  ['help', null],
  ['dump', null],
  ['pin', null],
  ['load', null],
  ['loadall', null],
  ['attach', null],
  ['detach', null],
  ['tracelog', null],
  ['run', null],
  ['profile', null],
];

function printHelp(ctx: InspectContext, kind: ObjectKind): void {
  if (ctx.json) ctx.w.null();
  else ctx.stderr.write(helpText(kind, ctx.binName));
}

/** Run `map|prog` with its words (everything after `ambpf map`). Never throws on user input. */
export function runInspect(kind: ObjectKind, argv: readonly string[], kernel: InspectKernel): InspectResult {
  const parsed = parseOptions(argv);
  if (parsed.bad) {
    const ctx = new InspectContext({ json: parsed.bad.json, pretty: parsed.bad.pretty, showPinned: false });
    ctx.err(`unrecognized option '${parsed.bad.option}'`);
    if (!ctx.json) printHelp(ctx, kind);
    ctx.finish();
    return { stdout: ctx.stdout.bytes(), stderr: ctx.stderr.bytes(), exitCode: 255 };
  }
  const ctx = new InspectContext(parsed.opts);
  const usage = (): never => {
    printHelp(ctx, kind);
    throw new UsageExit();
  };
  const table = kind === 'map' ? MAP_COMMANDS : PROG_COMMANDS;
  const words = parsed.words;
  let ret: number;
  try {
    if (words.length < 1) {
      ret = table[0]![1]!(ctx, kernel, new Args([]), usage);
    } else {
      const hit = table.find(([name]) => isPrefix(words[0], name));
      if (!hit) {
        printHelp(ctx, kind);
        ret = -1;
      } else if (hit[0] === 'help') {
        printHelp(ctx, kind);
        ret = 0;
      } else if (!hit[1]) {
        ctx.err(`'${kind} ${hit[0]}' is not supported by ambpf, which only inspects; use bpftool`);
        ret = -1;
      } else {
        ret = hit[1](ctx, kernel, new Args(words.slice(1)), usage);
      }
    }
  } catch (e) {
    if (!(e instanceof UsageExit)) throw e;
    ret = -1;
  }
  ctx.finish();
  return { stdout: ctx.stdout.bytes(), stderr: ctx.stderr.bytes(), exitCode: ret & 0xff };
}

/** The `ambpf map` / `ambpf prog` command over a kernel (the real one: see src/cli/commands/). */
export function inspectCommand(kind: ObjectKind, summary: string, kernel: () => InspectKernel): Command {
  return {
    summary,
    usage: helpText(kind),
    async run(argv) {
      const r = runInspect(kind, argv, kernel());
      process.stdout.write(r.stdout);
      process.stderr.write(r.stderr);
      return r.exitCode;
    },
  };
}
