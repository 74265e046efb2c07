// `ambpf map …`: bpftool-compatible map inspection (src/inspect/) on the real kernel through libbpf-ts.
import { inspectCommand } from '../../inspect/cli.ts';
import { LibbpfKernel } from '../../inspect/kernel.ts';

export const command = inspectCommand(
  'map',
  'bpftool-compatible map inspection (show|list|dump|lookup|getnext)',
  () => new LibbpfKernel(),
);
