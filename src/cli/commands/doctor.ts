import type { Command } from '../command.ts';
import { UsageError } from '../../errors.ts';

export const command: Command = {
  summary: 'check the kernel, mounts and tools ambpf needs',
  usage: [
    'Usage: ambpf doctor [-j|--json]',
    '',
    'Probes the kernel version, BTF, the bpffs and cgroup v2 mounts (from /proc/mounts), every BPF',
    'program type, map type and helper ambpf uses (real loads), tcx links (on a throwaway netns) and',
    'clang. Prints a table; exits 0 when everything is present, 1 naming each missing feature and the',
    'Linux version that brings it.',
    '',
    'Then the loader\'s choices on this kernel, from the same real probes: the minimum supported kernel',
    '(5.10, proven by the kernel matrix in docs/kernels.md), tc attach (tcx link on 6.6+, else a clsact',
    'filter) and sk_msg attach (prog_attach to the pinned sockhash on every kernel; whether sockmap',
    'links, 6.10+, work here is probed and shown).',
    '',
    '  -j, --json   machine-readable report',
  ].join('\n'),
  async run(argv) {
    const json = argv.includes('-j') || argv.includes('--json');
    const unknown = argv.filter((a) => a !== '-j' && a !== '--json');
    if (unknown.length) throw new UsageError(`unknown argument ${unknown[0]} for ambpf doctor; see ambpf doctor --help`);
    // Loaded here so `ambpf --help` never pays for koffi.
    const { runDoctor, renderReport } = await import('../../doctor/report.ts');
    const report = runDoctor();
    process.stdout.write(json ? JSON.stringify(report, null, 2) + '\n' : renderReport(report));
    return report.ok ? 0 : 1;
  },
};
