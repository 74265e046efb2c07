// The DaemonSet's cni-install container, run for real: its exact script (read from the manifest), with
// no capability at all (setpriv), against stand-ins for the node's CNI dirs. It must put ambpf-cni last
// in the primary conflist and the binary into the bin dir, put the entry back when the primary CNI
// rewrites its file, and on SIGTERM (the pod stopping) give the conflist back byte for byte and remove
// the binary; if the watch dies by itself the entry stays (fail closed) and the container exits non-zero.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { AMBPF_BIN } from '../helpers/loader.ts';
import { eventually } from '../helpers/wait.ts';
import { at, containersOf, loadManifests, only, type Container } from './manifests.ts';

const ds = only(loadManifests(), 'DaemonSet');
const installer = containersOf(ds).main.find((c) => c.name === 'cni-install') as Container;
const PRIMARY = `{
  "cniVersion": "1.0.0",
  "name": "bridge",
  "plugins": [
    { "type": "bridge", "bridge": "cni0", "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.88.0.0/16" }]] } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
`;

interface Node {
  readonly root: string;
  readonly bin: string;
  readonly conf: string;
  readonly conflist: string;
  readonly plugin: string;
}

function node(t: { teardown(fn: () => void): void }): Node {
  const root = mkdtempSync(join(tmpdir(), 'ambpf-cni-install-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const bin = join(root, 'opt/cni/bin');
  const conf = join(root, 'etc/cni/net.d');
  mkdirSync(bin, { recursive: true });
  mkdirSync(conf, { recursive: true });
  const conflist = join(conf, '10-bridge.conflist');
  writeFileSync(conflist, PRIMARY);
  // The image's plugin; its bytes are all the installer looks at.
  const plugin = join(root, 'image-ambpf-cni');
  writeFileSync(plugin, '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  return { root, bin, conf, conflist, plugin };
}

/** The container's command with no capability (as `drop: [ALL]` and no add leave it), `ambpf` on PATH. */
function start(
  n: Node,
  extraEnv: Record<string, string> = {},
): { child: ChildProcess; exited: Promise<number | null>; stderr: () => string } {
  const command = installer.command ?? [];
  const env = {
    PATH: `${dirname(AMBPF_BIN)}:${process.env['PATH'] ?? ''}`,
    AMBPF_CNI_BIN_MOUNT: n.bin,
    AMBPF_CNI_CONF_MOUNT: n.conf,
    AMBPF_CNI_PLUGIN: n.plugin,
    AMBPF_LOG_LEVEL: 'info',
    ...extraEnv,
  };
  const child = spawn('setpriv', ['--bounding-set=-all', '--inh-caps=-all', '--', ...command], {
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, exited, stderr: () => err };
}

const entryCount = (file: string): number => (readFileSync(file, 'utf8').match(/"ambpf-cni"/g) ?? []).length;

t.test('the container adds no capability (the policy test checks the rest of its securityContext)', async (t) => {
  t.ok(installer, 'the DaemonSet has a cni-install container');
  t.same(at(installer, 'securityContext.capabilities.add') ?? [], []);
  t.equal(at(installer, 'securityContext.runAsUser'), 0, "root: the owner of the node's CNI files");
});

t.test('installs last in the chain, keeps it there, and removes exactly its part on SIGTERM', async (t) => {
  const n = node(t);
  const c = start(n);
  t.teardown(() => {
    c.child.kill('SIGKILL');
  });
  await eventually(
    () => existsSync(join(n.bin, 'ambpf-cni')) && entryCount(n.conflist) === 1,
    30_000,
    'the entry and the binary',
  );
  const list = JSON.parse(readFileSync(n.conflist, 'utf8')) as {
    plugins: Array<{ type: string; socketPath?: string }>;
  };
  t.same(
    list.plugins.map((p) => p.type),
    ['bridge', 'portmap', 'ambpf-cni'],
    'last in the chain',
  );
  t.equal(list.plugins.at(-1)?.socketPath, '/var/run/ambpf/cni.sock', "pointing at the loader's --cni-socket");
  t.same(readFileSync(join(n.bin, 'ambpf-cni')), readFileSync(n.plugin), "the image's plugin, copied");

  // The primary CNI rewrites its file (as it does on restart): the watch puts the entry back.
  writeFileSync(n.conflist, PRIMARY);
  await eventually(() => entryCount(n.conflist) === 1, 30_000, 'the entry back after a rewrite');
  t.pass('re-inserted after the primary CNI rewrote its file');

  c.child.kill('SIGTERM');
  t.equal(await c.exited, 0, `exits 0 on SIGTERM (${c.stderr().trim().split('\n').at(-1) ?? ''})`);
  t.equal(readFileSync(n.conflist, 'utf8'), PRIMARY, "the conflist is the primary CNI's again, byte for byte");
  t.notOk(existsSync(join(n.bin, 'ambpf-cni')), 'the binary is gone');
  // And the watch really stopped first: nothing puts the entry back afterwards.
  writeFileSync(n.conflist, PRIMARY);
  const back = await eventually(() => entryCount(n.conflist) > 0, 1_500, 'a late re-insert').then(
    () => true,
    () => false,
  );
  t.notOk(back, 'no watch left running to put the entry back');
});

t.test('failOpen: off unless the ConfigMap says "true"', async (t) => {
  for (const [value, want] of [
    [undefined, undefined],
    ['false', undefined],
    ['true', true],
  ] as const) {
    const n = node(t);
    const c = start(n, value === undefined ? {} : { AMBPF_CNI_FAIL_OPEN: value });
    await eventually(() => entryCount(n.conflist) === 1, 30_000, 'the entry');
    const list = JSON.parse(readFileSync(n.conflist, 'utf8')) as {
      plugins: Array<{ type: string; failOpen?: boolean }>;
    };
    t.equal(list.plugins.at(-1)?.failOpen, want, `AMBPF_CNI_FAIL_OPEN=${String(value)}: failOpen ${String(want)}`);
    c.child.kill('SIGTERM');
    t.equal(await c.exited, 0, 'stopped cleanly');
  }
});

t.test('if the watch dies on its own the entry stays and the container fails (fail closed)', async (t) => {
  const n = node(t);
  const c = start(n);
  t.teardown(() => {
    c.child.kill('SIGKILL');
  });
  await eventually(() => entryCount(n.conflist) === 1, 30_000, 'the entry');
  // The watch is the shell's only child.
  const watchPid = await eventually(
    () => {
      const path = `/proc/${c.child.pid}/task/${c.child.pid}/children`;
      const ids = existsSync(path) ? readFileSync(path, 'utf8').trim().split(/\s+/).filter(Boolean) : [];
      return ids[0] ?? '';
    },
    10_000,
    'the watch process',
  );
  process.kill(Number(watchPid), 'SIGKILL');
  const code = await c.exited;
  t.not(code, 0, `the container exits non-zero (${code}): kubelet restarts it`);
  t.equal(entryCount(n.conflist), 1, 'the entry stays: new ambient pods wait rather than start outside the mesh');
  t.ok(existsSync(join(n.bin, 'ambpf-cni')), 'and so does the binary');
});
