import { parseArgs } from 'node:util';
import type { Command } from '../command.ts';
import { UsageError } from '../../errors.ts';

export const command: Command = {
  summary: 'the local two-node demo on the eBPF path',
  usage: `Usage: ambpf demo [--mode node|inpod]

Builds a two-node cluster in network namespaces (198.18.0.0/15), runs the ztunnel stand-in and one
\`ambpf run\` per node, sends a same-node, a cross-node and an inbound plaintext request, prints the
path each took (ztunnel's log and ambpf's counters), and removes everything. Needs root.
`,
  async run(argv) {
    const { values } = parseArgs({ args: [...argv], options: { mode: { type: 'string', default: 'node' } }, strict: true });
    const mode = values.mode;
    if (mode !== 'node' && mode !== 'inpod') throw new UsageError(`--mode must be node or inpod, not ${mode}`);
    const { runDemo } = await import('../../demo/demo.ts');
    return runDemo({ mode, out: (line) => process.stdout.write(line + '\n') });
  },
};
