import type { Command } from '../command.ts';

export const command: Command = {
  summary: 'the local two-node demo on the eBPF path',
  usage: 'Usage: ambpf demo [--mode node|inpod]\n\nRuns a two-node cluster in network namespaces on the eBPF path and shows the path bytes take.\n',
  async run() {
    process.stdout.write('ambpf demo: the two-node demo is coming in a later issue (the datapath issue).\n');
    return 0;
  },
};
