// The watch under credential trouble after a good start (issue 19 item 6): a rotated in-cluster
// service-account token is read again at once, and a 403 (a revoked role binding) is survived with a
// clear log line and backoff, the last good state served meanwhile.
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadKubeConfig } from '../../src/kube/config.ts';
import { createKubeSource } from '../../src/sources/kube.ts';
import { captureLog } from '../helpers/log.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { eventually } from '../helpers/wait.ts';
import { SnapshotRecorder, namespace, pod, podNames, startFakeServer, type TestContext } from './fixtures.ts';

const NODE = 'node-a';

async function inClusterSource(t: TestContext) {
  const server = await startFakeServer(t, { token: 'token-1' });
  server.addNamespace(namespace('shop'));
  server.addPod(pod('web-1', 'shop', NODE, '198.18.1.10'));
  const dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-sa-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'token'), 'token-1\n');
  writeFileSync(join(dir, 'ca.crt'), server.caPem);
  const kubeConfig = loadKubeConfig({
    inCluster: true,
    serviceAccountDir: dir,
    env: { KUBERNETES_SERVICE_HOST: '127.0.0.1', KUBERNETES_SERVICE_PORT: String(server.port) },
  });
  const captured = captureLog();
  const source = createKubeSource({
    kubeConfig,
    nodeName: NODE,
    coalesceMs: 20,
    staleAfterMs: 60_000,
    backoffBaseMs: 40,
    backoffMaxMs: 300,
    log: captured.log,
  });
  t.teardown(() => source.stop());
  const rec = new SnapshotRecorder();
  await source.start(rec.onSnapshot);
  await eventually(() => server.openWatches === 2, 10_000, 'both watches open');
  return { server, dir, source, rec, captured };
}

t.test('a rotated service-account token is used by the next request', async (t) => {
  const { server, dir, rec } = await inClusterSource(t);
  t.same(podNames(rec.last), ['shop/web-1']);
  // kubelet swaps the projected token; the API server stops taking the old one.
  writeFileSync(join(dir, 'token'), 'token-2\n');
  server.setToken('token-2');
  server.dropWatches();
  server.addPod(pod('web-2', 'shop', NODE, '198.18.1.11'));
  await rec.waitFor((s) => podNames(s).includes('shop/web-2'), 10_000, 'a change seen with the new token');
  const after = server.requests.filter((r) => r.watch).slice(-2);
  t.ok(
    after.every((r) => r.status !== 401),
    'the watches after the rotation were accepted (no 60 s cache of the old token)',
  );
});

t.test('a 403 after a good start: a clear error, backoff, the last state kept, recovery', async (t) => {
  const { server, rec, captured } = await inClusterSource(t);
  const delivered = rec.snapshots.length;
  server.failNext(4, 403);
  server.dropWatches();
  const refusals = (): Array<Record<string, unknown>> =>
    captured.lines.filter((l) => l['msg'] === 'watch restart after error' && l['status'] === 403);
  await eventually(() => refusals().length >= 4, 10_000, 'four refused attempts, each logged with its status');
  const lines = refusals();
  t.match(
    lines[0],
    { hint: /^forbidden: grant list\/watch on (pods|namespaces) to ambpf's service account$/, level: 40 },
    'saying what to fix',
  );
  t.ok(
    lines.every((l) => Number(l['delayMs']) > 0),
    `every retry waits (${lines.map((l) => l['delayMs']).join(', ')} ms)`,
  );
  const podAttempts = captured.lines
    .filter((l) => l['msg'] === 'watch restart after error' && l['resource'] === 'pods')
    .map((l) => Number(l['attempt']));
  t.ok(
    podAttempts.length >= 2 && podAttempts.every((a, i) => i === 0 || a > podAttempts[i - 1]!),
    `the backoff steps up (attempts ${podAttempts.join(', ')})`,
  );
  t.equal(rec.snapshots.length, delivered, 'nothing was delivered while refused: the last good state stands');
  server.addPod(pod('web-3', 'shop', NODE, '198.18.1.12'));
  await rec.waitFor((s) => podNames(s).includes('shop/web-3'), 10_000, 'recovery once the server accepts again');
});
