// The fake API server as a child process: seeded from a List file, driven over IPC, and able to live
// in a network namespace the test made (where a node's loader would reach it on 127.0.0.1).
import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { loadKubeConfig } from '../../src/kube/config.ts';
import { createKubeSource } from '../../src/sources/kube.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { FakeApiServerProcess } from '../../src/testbed/apiserver/process.ts';
import { SnapshotRecorder, namespace, pod, podNames, type TestContext } from './fixtures.ts';

const run = promisify(execFile);

function workDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'ambpf-fakeproc-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function seedFile(dir: string): string {
  const file = join(dir, 'seed.yaml');
  writeFileSync(
    file,
    stringify({
      apiVersion: 'v1',
      kind: 'List',
      items: [
        { apiVersion: 'v1', kind: 'Namespace', ...namespace('shop', { 'istio.io/dataplane-mode': 'ambient' }) },
        { apiVersion: 'v1', kind: 'Pod', ...pod('web-1', 'shop', 'node-a', '198.18.1.10') },
        { apiVersion: 'v1', kind: 'Pod', ...pod('web-2', 'shop', 'node-b', '198.18.2.10') },
      ],
    }),
  );
  return file;
}

t.test('seeded from a List, driven over IPC, watched by the kube source through the kubeconfig it wrote', async (t) => {
  const dir = workDir(t);
  const kubeconfigOut = join(dir, 'kubeconfig');
  const server = await FakeApiServerProcess.start({ kubeconfigOut, seedFile: seedFile(dir) });
  t.teardown(() => server.stop());
  t.match(server.url, /^https:\/\/127\.0\.0\.1:\d+$/);
  const source = createKubeSource({
    kubeConfig: loadKubeConfig({ kubeconfig: kubeconfigOut }),
    nodeName: 'node-a',
    coalesceMs: 20,
  });
  t.teardown(() => source.stop());
  const rec = new SnapshotRecorder();
  await source.start(rec.onSnapshot);
  t.same(podNames(rec.last), ['shop/web-1']);
  await server.addPod(pod('web-3', 'shop', 'node-a', '198.18.1.11'));
  await rec.waitFor((s) => podNames(s).includes('shop/web-3'), 5000, 'pod added over IPC');
  await server.deletePod('shop', 'web-1');
  await rec.waitFor((s) => !podNames(s).includes('shop/web-1'), 5000, 'pod deleted over IPC');
  const requests = await server.requests();
  t.ok(
    requests.some((r) => r.watch && r.query['fieldSelector'] === 'spec.nodeName=node-a'),
    'request log readable over IPC',
  );
  await t.rejects(server.deletePod('shop', 'nope'), /does not exist/, 'errors come back as rejections');
  await server.stop();
  t.ok(readFileSync(kubeconfigOut, 'utf8').includes('certificate-authority-data'));
});

t.test('inside a network namespace the test made, reachable there on 127.0.0.1', async (t) => {
  const netns = `${testPrefix()}-api`;
  await run('ip', ['netns', 'add', netns]);
  t.teardown(() => run('ip', ['netns', 'del', netns]).catch(() => undefined));
  await run('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
  const dir = workDir(t);
  const kubeconfigOut = join(dir, 'kubeconfig');
  const server = await FakeApiServerProcess.start({
    kubeconfigOut,
    seedFile: seedFile(dir),
    prefix: ['nsenter', `--net=/run/netns/${netns}`],
  });
  t.teardown(() => server.stop());
  const ca = join(dir, 'ca.pem');
  const kc = loadKubeConfig({ kubeconfig: kubeconfigOut });
  writeFileSync(ca, kc.ca ?? '');
  const token = /^Bearer (.*)$/.exec(kc.authorization() ?? '')?.[1] ?? '';
  const inside = await run('nsenter', [
    `--net=/run/netns/${netns}`,
    'curl',
    '-sS',
    '-m',
    '3',
    '--cacert',
    ca,
    '-H',
    `Authorization: Bearer ${token}`,
    `${server.url}/api/v1/namespaces/shop/pods`,
  ]);
  const list = JSON.parse(inside.stdout) as { kind: string; items: unknown[] };
  t.equal(list.kind, 'PodList');
  t.equal(list.items.length, 2, 'served inside the namespace');
  await server.stop();
});
