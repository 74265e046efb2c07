import { parseArgs } from 'node:util';
import type { Command } from '../command.ts';
import { UsageError } from '../../errors.ts';

export const command: Command = {
  summary: 'the local two-node demo on the eBPF path',
  usage: `Usage: ambpf demo [--mode inpod|node]

Builds a two-node cluster in network namespaces (198.18.0.0/15), runs one \`ambpf run\` per node and the
ztunnel stand-in (inpod, the default: one per node, taking its pods from ambpf over ZDS; node: ztunnel
<= 1.22 in its own pod), sends a same-node, a cross-node and an inbound plaintext request, prints the
path each took (ztunnel's log and ambpf's counters), and removes everything. Needs root.
`,
  async run(argv) {
    const { values } = parseArgs({
      args: [...argv],
      options: { mode: { type: 'string', default: 'inpod' } },
      strict: true,
    });
    const mode = values.mode;
    if (mode !== 'node' && mode !== 'inpod') throw new UsageError(`--mode must be node or inpod, not ${mode}`);
    const { runDemo } = await import('../../demo/demo.ts');
    return runDemo({ mode, out: (line) => process.stdout.write(line + '\n') });
  },
};
