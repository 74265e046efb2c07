// `ambpf pods`: the ambient-pod map decoded and named (src/status/pods.ts).
import type { Command } from '../command.ts';
import { parseViewOptions, VIEW_OPTIONS_HELP } from '../../status/args.ts';

const USAGE = `Usage: ambpf pods [--bpffs DIR] [--state-file F] [-j]

Every entry of the ambient-pod map (ambpf_pods, pinned under DIR) decoded: pod IP, netns cookie,
host-side interface and its index, flags (ambient, opt-out, dns-capture, ztunnel), joined by IP with
the pod's namespace/name and node from the state file \`ambpf run\` writes after each reconcile.

Drift is flagged both ways: an entry in the map that the state file does not name (the loader has
not removed it, or another writer put it there), and a pod of the state file the map lacks (the
loader could not apply it: see \`ambpf status\` for its problems). A pod whose netns cookie has no
ambpf_netns entry is noted too: connect4 finds pods by netns, so its traffic is not redirected.

Options:
${VIEW_OPTIONS_HELP}

Exit status: 0 (drift is shown, not an error); 1 when ambpf is not installed under DIR or the
state file is unreadable; 2 on a usage error.
`;

export const command: Command = {
  summary: 'the ambient-pod map decoded, with pod names',
  usage: USAGE,
  async run(argv) {
    const o = parseViewOptions('pods', argv);
    // Loaded here so `ambpf --help` never pays for koffi.
    const { withPinnedView } = await import('../../status/view.ts');
    const { collectPods, renderPods } = await import('../../status/pods.ts');
    const { ifName } = await import('../../libbpf/index.ts');
    const report = withPinnedView(o, (maps, state) =>
      collectPods({ bpffs: o.bpffs, stateFile: o.stateFile, state, maps, ifName }),
    );
    process.stdout.write(o.json ? JSON.stringify(report) + '\n' : renderPods(report));
    return 0;
  },
};
