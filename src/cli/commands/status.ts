// `ambpf status`: attachments, map fill, ztunnel, counters, last reconcile (src/status/status.ts).
import type { Command } from '../command.ts';
import { parseViewOptions, VIEW_OPTIONS_HELP } from '../../status/args.ts';

const USAGE = `Usage: ambpf status [--bpffs DIR] [--state-file F] [-j]

What ambpf has in the kernel under DIR, and whether it works:
  - attached programs: every link pinned under DIR/links (hook, link id, program id and name, and
    its target: cgroup path, interface, or netns), plus sk_msg on the sockhash (prog_attach);
    defunct links (their cgroup, interface or netns is gone) are marked PROBLEM;
  - map fill: entries / max_entries of ambpf_pods, ambpf_netns, ambpf_pair_dst and ambpf_outflow,
    marked PRESSURE from 80% (a full map makes the loader fail updates, the programs miss);
  - ztunnel: the address and ports in ambpf_ztunnel and whether it is READY (nothing is redirected
    until it is);
  - counters: the non-zero counters of ambpf_stats, summed over CPUs, grouped by program;
  - last reconcile: when the loader last wrote its state file, and the objects it could not apply.

Options:
${VIEW_OPTIONS_HELP}

Exit status: 0; 1 when ambpf is not installed under DIR or the state file is unreadable; 2 on a
usage error.
`;

export const command: Command = {
  summary: 'programs, links, map fill and counters of the running datapath',
  usage: USAGE,
  async run(argv) {
    const o = parseViewOptions('status', argv);
    // Loaded here so `ambpf --help` never pays for koffi.
    const { withPinnedView } = await import('../../status/view.ts');
    const { collectStatus, renderStatus } = await import('../../status/status.ts');
    const { readLinks } = await import('../../status/links.ts');
    const report = withPinnedView(o, (maps, state) => collectStatus({ bpffs: o.bpffs, maps, links: readLinks(o.bpffs), stateFile: o.stateFile, state }));
    process.stdout.write(o.json ? JSON.stringify(report) + '\n' : renderStatus(report));
    return 0;
  },
};
