// `ambpf cni install|uninstall`: ambpf-cni into the node's CNI chain and out again (src/cni/install.ts),
// as the DaemonSet's install step runs it against the host's CNI dirs.
import { parseArgs } from 'node:util';
import { watch } from 'node:fs';
import type { Command } from '../command.ts';
import { UsageError, describeError } from '../../errors.ts';
import { logger } from '../../log.ts';

const log = logger('cni');
const SETTLE_MS = 100;
const SAFETY_NET_MS = 5000;

const USAGE = `Usage: ambpf cni install [--watch] [options]
       ambpf cni uninstall [--conf-dir D] [--bin-dir D]

install: copies the plugin binary into the CNI bin dir and appends {"type": "ambpf-cni", ...} as the
last plugin of the primary CNI's conflist (the first .conflist/.conf/.json by name); creates no
conflist of its own. Idempotent. --watch keeps it there when the primary CNI rewrites its file.
uninstall: removes exactly that entry (the file is as it was, byte for byte) and the binary.

Options:
  --conf-dir D    CNI config dir (default /etc/cni/net.d)
  --bin-dir D     CNI bin dir (default /opt/cni/bin)
  --plugin F      the plugin binary to copy (default: none, binary left alone)
  --socket PATH   the agent's socket, the entry's socketPath (default /var/run/ambpf/cni.sock)
  --fail-open     write "failOpen": true into the entry: when the agent cannot be reached, new pods
                  start outside the mesh instead of waiting (their traffic bypasses ztunnel's mTLS
                  and policy until the agent captures them). Off by default: fail closed
  --watch         keep running and re-insert the entry whenever the config dir changes
`;

export const command: Command = {
  summary: "put ambpf-cni into the node's CNI chain (install) or take it out (uninstall)",
  usage: USAGE,
  async run(argv) {
    const { values, positionals } = parseArgs({
      args: [...argv],
      allowPositionals: true,
      options: {
        'conf-dir': { type: 'string' },
        'bin-dir': { type: 'string' },
        plugin: { type: 'string' },
        socket: { type: 'string', default: '/var/run/ambpf/cni.sock' },
        'fail-open': { type: 'boolean' },
        watch: { type: 'boolean' },
      },
      strict: true,
    });
    const { ensureInstalled, uninstall, DEFAULT_BIN_DIR, DEFAULT_CONF_DIR } = await import('../../cni/install.ts');
    const confDir = values['conf-dir'] ?? DEFAULT_CONF_DIR;
    const binDir = values['bin-dir'] ?? DEFAULT_BIN_DIR;
    const [verb] = positionals;
    if (verb === 'uninstall') {
      const r = uninstall({ confDir, binDir });
      log.info({ file: r.file, changed: r.changed }, 'ambpf-cni removed from the CNI chain');
      return 0;
    }
    if (verb !== 'install') throw new UsageError('expected `ambpf cni install` or `ambpf cni uninstall`');
    const entry = { socketPath: values.socket, ...(values['fail-open'] ? { failOpen: true } : {}) };
    const opts = { confDir, binDir, binary: values.plugin, entry };
    const ensure = (): void => {
      try {
        const r = ensureInstalled(opts);
        if (r.changed) log.info({ file: r.file }, "ambpf-cni is the last plugin of the primary CNI's conflist");
        else if (!r.file) log.warn({ confDir }, 'no CNI config yet: waiting for the primary CNI to write one');
      } catch (err) {
        log.error({ err: describeError(err) }, 'cannot insert ambpf-cni');
      }
    };
    ensure();
    if (!values.watch) return 0;
    // Our own write fires the watch too; ensure() then finds the entry in place and writes nothing.
    // An event can come mid-write (a primary CNI that truncates and rewrites in place): ensure() runs
    // once the burst settled, and a periodic pass catches anything a watch missed.
    let settle: NodeJS.Timeout | undefined;
    const watcher = watch(confDir, () => {
      clearTimeout(settle);
      settle = setTimeout(ensure, SETTLE_MS);
    });
    const safetyNet = setInterval(ensure, SAFETY_NET_MS);
    return new Promise<number>((resolve) => {
      const stop = (): void => {
        watcher.close();
        clearTimeout(settle);
        clearInterval(safetyNet);
        resolve(0);
      };
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
    });
  },
};
