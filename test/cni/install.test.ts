// ambpf-cni into the primary CNI's conflist and out again (src/cni/install.ts, `ambpf cni`), on
// fixtures shaped like the common primary CNIs' files: idempotent, last in the chain, kept there when
// the primary CNI rewrites its file, and uninstall gives the file back byte for byte.
import t from 'tap';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ensureInstalled, insertEntry, removeEntry, uninstall, PLUGIN_TYPE } from '../../src/cni/install.ts';
import { AMBPF_BIN } from '../helpers/loader.ts';
import { eventually } from '../helpers/wait.ts';

const run = promisify(execFile);

/** Files as the primary CNIs write them (formatting differs on purpose). */
const FIXTURES: Record<string, string> = {
  '10-bridge.conflist': `{
  "cniVersion": "1.0.0",
  "name": "bridge",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.88.0.0/16" }]], "routes": [{ "dst": "0.0.0.0/0" }] }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
`,
  '10-calico.conflist': `{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "calico",
      "log_level": "info",
      "datastore_type": "kubernetes",
      "nodename": "node1",
      "mtu": 0,
      "ipam": {"type": "calico-ipam"},
      "policy": {"type": "k8s"},
      "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}
    },
    {
      "type": "portmap",
      "snat": true,
      "capabilities": {"portMappings": true}
    },
    {
      "type": "bandwidth",
      "capabilities": {"bandwidth": true}
    }
  ]
}`,
  '05-cilium.conflist': `{"cniVersion":"0.3.1","name":"cilium","plugins":[{"type":"cilium-cni","enable-debug":false,"log-file":"/var/run/cilium/cilium-cni.log"}]}\n`,
};

function plugins(text: string): Array<Record<string, unknown>> {
  return (JSON.parse(text) as { plugins: Array<Record<string, unknown>> }).plugins;
}

const entry = { socketPath: '/var/run/ambpf/cni.sock' };

for (const [name, original] of Object.entries(FIXTURES)) {
  t.test(`${name}: appended last, idempotent, removed byte for byte`, async (t) => {
    const once = insertEntry(original, entry);
    const types = plugins(once).map((p) => p['type']);
    t.equal(types.at(-1), PLUGIN_TYPE, 'ambpf-cni is the last plugin');
    t.same(
      types.slice(0, -1),
      plugins(original).map((p) => p['type']),
      "the primary's plugins unchanged, in order",
    );
    t.same(plugins(once).at(-1), { type: PLUGIN_TYPE, ...entry });
    t.equal(insertEntry(once, entry), once, 'inserting again changes nothing');
    t.equal(removeEntry(once), original, 'removal restores the file byte for byte');
    t.equal(removeEntry(original), original, 'removing from a file without it changes nothing');
    // A primary CNI that re-wrote the file with ambpf's entry in the middle: moved back to the end.
    const list = JSON.parse(original) as { plugins: unknown[] };
    list.plugins.unshift({ type: PLUGIN_TYPE, socketPath: '/old.sock' });
    const moved = insertEntry(JSON.stringify(list, null, 2), entry);
    t.same(
      plugins(moved)
        .map((p) => p['type'])
        .filter((x) => x === PLUGIN_TYPE),
      [PLUGIN_TYPE],
      'one entry',
    );
    t.equal(plugins(moved).at(-1)?.['type'], PLUGIN_TYPE, 'and it is last');
  });
}

t.test('a config that is no conflist is refused with a clear error', async (t) => {
  const single = '{"cniVersion":"1.0.0","name":"x","type":"bridge"}';
  t.throws(() => insertEntry(single, entry, '10-x.conf'), /no "plugins" list/);
  t.throws(() => insertEntry('{nope', entry, '10-x.conflist'), /is not JSON/);
});

t.test('ambpf cni install/uninstall: binary + entry in the first config by name; uninstall restores', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'ambpf-cni-install-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const confDir = join(root, 'net.d');
  const binDir = join(root, 'bin');
  mkdirSync(confDir);
  mkdirSync(binDir);
  for (const [n, text] of Object.entries(FIXTURES)) writeFileSync(join(confDir, n), text);
  const plugin = join(root, 'ambpf-cni.src');
  writeFileSync(plugin, '#!/bin/sh\nexit 0\n');
  const primary = join(confDir, '05-cilium.conflist');

  const r = ensureInstalled({ confDir, binDir, binary: plugin, entry });
  t.equal(r.file, primary, "the runtime's pick: the first file by name");
  t.ok(r.changed);
  t.equal(statSync(join(binDir, PLUGIN_TYPE)).mode & 0o777, 0o755, 'the binary is executable');
  t.equal(plugins(readFileSync(primary, 'utf8')).at(-1)?.['type'], PLUGIN_TYPE);
  const calico = readFileSync(join(confDir, '10-calico.conflist'), 'utf8');
  t.equal(calico, FIXTURES['10-calico.conflist'], 'other files untouched');
  t.notOk(ensureInstalled({ confDir, binDir, binary: plugin, entry }).changed, 'install again: no change');

  // The CLI, with --watch: the primary CNI rewrites its file (without our entry); it comes back.
  const dirs = ['--conf-dir', confDir, '--bin-dir', binDir];
  const cli = execFile(AMBPF_BIN, ['cni', 'install', '--watch', ...dirs, '--socket', entry.socketPath]);
  let cliOut = '';
  cli.stdout?.on('data', (c: Buffer) => (cliOut += c.toString()));
  cli.stderr?.on('data', (c: Buffer) => (cliOut += c.toString()));
  t.teardown(() => cli.kill('SIGTERM'));
  // Twice: the first may be undone by the command's initial pass, the second only while it keeps running.
  for (const round of [1, 2]) {
    writeFileSync(primary, FIXTURES['05-cilium.conflist']!);
    await eventually(
      () => plugins(readFileSync(primary, 'utf8')).at(-1)?.['type'] === PLUGIN_TYPE,
      10_000,
      `the entry to be back after the primary CNI rewrote its file (${round})`,
    ).catch((err: unknown) => {
      throw new Error(`${String(err)}; ambpf cni said: ${cliOut}`);
    });
  }
  cli.kill('SIGTERM');
  await new Promise((resolve) => cli.once('exit', resolve));

  await run(AMBPF_BIN, ['cni', 'uninstall', ...dirs]);
  t.equal(readFileSync(primary, 'utf8'), FIXTURES['05-cilium.conflist'], 'uninstall: byte for byte');
  t.notOk(existsSync(join(binDir, PLUGIN_TYPE)), 'uninstall: the binary is gone');
  t.notOk(uninstall({ confDir, binDir }).changed, 'uninstall again: no change');
});
