// Failures of `ambpf pods` / `ambpf status` an operator can act on, each a full sentence.
import { AmbpfError } from '../errors.ts';

/** Nothing (or only part) of ambpf is pinned under the bpffs directory asked about. */
export class NotInstalledError extends AmbpfError {
  override readonly name: string = 'NotInstalledError';
  readonly bpffs: string;
  readonly missing: readonly string[];
  constructor(bpffs: string, missing: readonly string[], partial: boolean) {
    super(
      partial
        ? `ambpf is only partly installed under ${bpffs}: ${missing.join(', ')} ${missing.length === 1 ? 'is' : 'are'} not pinned there. ` +
            `Restart \`ambpf run --bpffs ${bpffs}\` to repair it, or remove it with \`ambpf uninstall --bpffs ${bpffs}\`.`
        : `ambpf is not installed under ${bpffs}: run \`ambpf run --bpffs ${bpffs}\` first, or pass the --bpffs directory it runs with.`,
      { bpffs, missing: missing.join(',') },
    );
    this.bpffs = bpffs;
    this.missing = missing;
  }
}

/** The loader's state file exists but cannot be used. */
export class StateFileError extends AmbpfError {
  override readonly name: string = 'StateFileError';
}
