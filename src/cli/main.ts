// ambpf CLI entry: global flags, command dispatch, and the one place errors become exit codes.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { COMMANDS } from './registry.ts';
import type { Command } from './command.ts';
import { AmbpfError, describeError } from '../errors.ts';
import { isLogLevel, logger, setLogLevel } from '../log.ts';

const BPFTOOL_OPTIONS = new Set(['-j', '--json', '-p', '--pretty', '-f', '--bpffs']);

function topHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return [
    'Usage: ambpf [--log-level LEVEL] <command> [args...]',
    '',
    'eBPF redirection for Istio ambient mode: pod traffic to ztunnel without iptables.',
    '',
    'Commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    "Run `ambpf <command> --help` for a command's options.",
    'Global options:',
    '  --log-level LEVEL   fatal|error|warn|info|debug|trace|silent (default info; env AMBPF_LOG_LEVEL)',
    '',
  ].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const args = [...argv];
  while (args[0]?.startsWith('--log-level')) {
    const flag = args.shift()!;
    const value = flag.includes('=') ? flag.slice(flag.indexOf('=') + 1) : args.shift();
    if (!value || !isLogLevel(value)) {
      process.stderr.write(`ambpf: --log-level needs one of fatal|error|warn|info|debug|trace|silent\n`);
      return 2;
    }
    setLogLevel(value);
  }
  // bpftool accepts its options before the object (`bpftool -j map show`); so does `ambpf -j map show`:
  // they are handed to the command, which parses them where bpftool would.
  const leading: string[] = [];
  while (args[0] !== undefined && BPFTOOL_OPTIONS.has(args[0])) leading.push(args.shift()!);
  const name = args.shift();
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(topHelp());
    return name ? 0 : 2;
  }
  if (name === '--version' || name === 'version') {
    process.stdout.write('ambpf 0.1.0\n');
    return 0;
  }
  const entry = COMMANDS.find((c) => c.name === name);
  if (!entry) {
    process.stderr.write(`ambpf: unknown command '${name}'\n\n${topHelp()}`);
    return 2;
  }
  const modulePath = fileURLToPath(new URL(entry.module, import.meta.url));
  if (!existsSync(modulePath)) {
    process.stderr.write(`ambpf ${name}: not available in this build yet (coming in a later issue)\n`);
    return 2;
  }
  const { command } = (await import(modulePath)) as { command: Command };
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(command.usage.endsWith('\n') ? command.usage : command.usage + '\n');
    return 0;
  }
  return command.run([...leading, ...args]);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    // An error we raised on purpose gets its one-line message; anything else is a bug, so it also
    // gets its stack at debug level for the report.
    process.stderr.write(`ambpf: ${describeError(err)}\n`);
    if (!(err instanceof AmbpfError)) logger().debug({ err }, 'unexpected error');
    process.exitCode = err instanceof AmbpfError ? err.exitCode : 1;
  },
);
