import { parseArgs } from 'node:util';
import type { Command } from '../command.ts';
import { UsageError } from '../../errors.ts';

export const command: Command = {
  summary: 'the local two-node demo on the eBPF path',
  usage: `Usage: ambpf demo [--mode node]

Builds a two-node cluster in network namespaces (198.18.0.0/15), runs the ztunnel stand-in and one
\`ambpf run\` per node, sends a same-node, a cross-node and an inbound plaintext request, prints the
path each took (ztunnel's log and ambpf's counters), and removes everything. Needs root.
`,
  async run(argv) {
    const { values } = parseArgs({ args: [...argv], options: { mode: { type: 'string', default: 'node' } }, strict: true });
    if (values.mode !== 'node') throw new UsageError(`--mode ${values.mode} is not available in the demo yet; use --mode node`);
    const { runDemo } = await import('../../demo/demo.ts');
    return runDemo({ out: (line) => process.stdout.write(line + '\n') });
  },
};
