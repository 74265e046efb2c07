// `ambpf prog …`: bpftool-compatible prog inspection (src/inspect/) on the real kernel through libbpf-ts.
import { inspectCommand } from '../../inspect/cli.ts';
import { LibbpfKernel } from '../../inspect/kernel.ts';

export const command = inspectCommand(
  'prog',
  'bpftool-compatible program inspection (show|list)',
  () => new LibbpfKernel(),
);
