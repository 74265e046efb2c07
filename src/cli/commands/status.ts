// `ambpf status`: attachments, map fill, ztunnel, counters, last reconcile (src/status/status.ts).
import type { Command } from '../command.ts';
import { parseViewOptions, VIEW_OPTIONS_HELP } from '../../status/args.ts';

const USAGE = `Usage: ambpf status [--bpffs DIR] [--state-file F] [-j]

What ambpf has in the kernel under DIR, and whether it works:
  - attached programs: every link pinned under DIR/links (hook, link id, program id and name, and
    its target: cgroup path, interface, or netns), plus sk_msg on the sockhash (prog_attach);
    defunct links (their cgroup, interface or netns is gone) are marked PROBLEM;
  - map fill: entries / max_entries of every map the loader or the programs fill, marked PRESSURE
    from 80%, and the inserts the programs could not make (docs/maps.md: what a full map does);
    pods the loader wants that ambpf_pods lacks are listed as NOT CAPTURED;
  - ztunnel: the address and ports in ambpf_ztunnel and whether it is READY (nothing is redirected
    until it is); inpod: each ztunnel connected over ZDS, with a PROBLEM line when it runs outside the
    cgroup the programs are attached to (its spoofed legs and DNS answers then fail);
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
    const { openPinnedSpecMaps, MAP_SPECS } = await import('../../metrics/map-health.ts');
    const report = withPinnedView(o, (maps, state) => {
      // The inpod topology's own maps (absent pins: the node topology) go in the fill table too.
      const extra = openPinnedSpecMaps(
        o.bpffs,
        MAP_SPECS.map((m) => m.map).filter((n) => !(n in maps.raw)),
      );
      try {
        return collectStatus({
          bpffs: o.bpffs,
          maps,
          links: readLinks(o.bpffs),
          stateFile: o.stateFile,
          state,
          extraMaps: extra.maps,
        });
      } finally {
        extra.close();
      }
    });
    process.stdout.write(o.json ? JSON.stringify(report) + '\n' : renderStatus(report));
    return 0;
  },
};
