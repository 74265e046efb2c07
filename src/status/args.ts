// The options `ambpf pods` and `ambpf status` share, parsed strictly: a typo is a usage error (exit
// 2) naming the option, not a silently ignored flag.
import { parseArgs } from 'node:util';
import { UsageError } from '../errors.ts';
import { DEFAULT_STATE_FILE } from './state-file.ts';

export const DEFAULT_BPFFS = '/sys/fs/bpf/ambpf';

export interface ViewOptions {
  readonly bpffs: string;
  readonly stateFile: string;
  readonly json: boolean;
}

export const VIEW_OPTIONS_HELP = [
  `  --bpffs DIR        where ambpf run pins its maps and links (default ${DEFAULT_BPFFS})`,
  `  --state-file F     the loader's state file, for pod names (default ${DEFAULT_STATE_FILE})`,
  '  -j, --json         one JSON object on stdout instead of the table',
].join('\n');

export function parseViewOptions(command: string, argv: readonly string[]): ViewOptions {
  try {
    const { values } = parseArgs({
      args: [...argv],
      options: {
        bpffs: { type: 'string', default: DEFAULT_BPFFS },
        'state-file': { type: 'string', default: DEFAULT_STATE_FILE },
        json: { type: 'boolean', short: 'j', default: false },
      },
      strict: true,
      allowPositionals: false,
    });
    return { bpffs: values.bpffs.replace(/\/+$/, '') || '/', stateFile: values['state-file'], json: values.json };
  } catch (err) {
    throw new UsageError(`${(err as Error).message.replace(/\.$/, '')}; see ambpf ${command} --help`);
  }
}
