// Client configuration (--kubeconfig, --in-cluster), node-name resolution and the backoff policy.
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { makeTestPki } from '../../src/testbed/apiserver/tls.ts';
import { loadKubeConfig } from '../../src/kube/config.ts';
import { KubeConfigError } from '../../src/kube/errors.ts';
import { resolveNodeName } from '../../src/kube/node-name.ts';
import { backoffDelay } from '../../src/kube/backoff.ts';
import { createKubeSource } from '../../src/sources/kube.ts';
import type { KubeConfig } from '../../src/kube/config.ts';
import type { FakeApiServer } from '../../src/testbed/apiserver/server.ts';
import { SnapshotRecorder, namespace, pod, podNames, startFakeServer, type TestContext } from './fixtures.ts';

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'ambpf-kubecfg-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function syncsWith(t: TestContext, server: FakeApiServer, kubeConfig: KubeConfig): Promise<string[]> {
  server.addNamespace(namespace('shop'));
  server.addPod(pod('web-1', 'shop', 'node-a', '198.18.1.10'));
  const source = createKubeSource({ kubeConfig, nodeName: 'node-a' });
  t.teardown(() => source.stop());
  const rec = new SnapshotRecorder();
  await source.start(rec.onSnapshot);
  return podNames(rec.last);
}

t.test("--kubeconfig FILE: the fake server's kubeconfig reaches it (CA data + token)", async (t) => {
  const server = await startFakeServer(t);
  const file = join(tempDir(t), 'kubeconfig');
  writeFileSync(file, server.kubeconfigYaml());
  t.same(await syncsWith(t, server, loadKubeConfig({ kubeconfig: file })), ['shop/web-1']);
});

t.test('--in-cluster: service account token and CA from a directory, address from the environment', async (t) => {
  const server = await startFakeServer(t);
  const dir = tempDir(t);
  writeFileSync(join(dir, 'token'), server.bearerToken);
  writeFileSync(join(dir, 'ca.crt'), server.caPem);
  writeFileSync(join(dir, 'namespace'), 'istio-system');
  const env = { KUBERNETES_SERVICE_HOST: '127.0.0.1', KUBERNETES_SERVICE_PORT: String(server.port) };
  const kc = loadKubeConfig({ inCluster: true, serviceAccountDir: dir, env });
  t.equal(kc.server, `https://127.0.0.1:${server.port}`);
  t.same(await syncsWith(t, server, kc), ['shop/web-1']);
  t.ok(
    server.requests.every((r) => r.status !== 401),
    'the token file was sent as the bearer token',
  );
});

t.test('configuration mistakes are clear usage errors', async (t) => {
  const dir = tempDir(t);
  const cases: Array<[string, () => unknown, RegExp]> = [
    [
      'missing kubeconfig file',
      () => loadKubeConfig({ kubeconfig: join(dir, 'nope') }),
      /cannot load kubeconfig .*nope/,
    ],
    ['both sources', () => loadKubeConfig({ kubeconfig: 'x', inCluster: true }), /exclude each other/],
    ['no source', () => loadKubeConfig({}), /--kubeconfig FILE or --in-cluster/],
    [
      'in-cluster outside a pod',
      () => loadKubeConfig({ inCluster: true, serviceAccountDir: dir, env: {} }),
      /KUBERNETES_SERVICE_HOST/,
    ],
    [
      'in-cluster without a token',
      () =>
        loadKubeConfig({
          inCluster: true,
          serviceAccountDir: dir,
          env: { KUBERNETES_SERVICE_HOST: '10.0.0.1', KUBERNETES_SERVICE_PORT: '443' },
        }),
      /token is missing|token.*missing|is missing/,
    ],
  ];
  for (const [what, fn, message] of cases) {
    t.throws(fn, KubeConfigError, what);
    try {
      fn();
    } catch (err) {
      t.match((err as Error).message, message, what);
      t.equal((err as KubeConfigError).exitCode, 2, `${what}: usage exit code`);
    }
  }
  const bad = join(dir, 'no-cluster');
  writeFileSync(bad, 'apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts: []\n');
  t.throws(() => loadKubeConfig({ kubeconfig: bad }), KubeConfigError, 'a kubeconfig without a cluster');
});

t.test('kubeconfig: the fields ambpf takes (files relative to it, tokenFile read per request)', async (t) => {
  const server = await startFakeServer(t);
  const dir = tempDir(t);
  writeFileSync(join(dir, 'ca.pem'), server.caPem);
  writeFileSync(join(dir, 'token'), `${server.bearerToken}\n`);
  const file = join(dir, 'kubeconfig');
  const write = (cluster: Record<string, unknown>, user: Record<string, unknown>): void =>
    writeFileSync(
      file,
      stringify({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [{ name: 'c', cluster: { server: server.url, ...cluster } }],
        users: [{ name: 'u', user }],
        contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }],
        'current-context': 'x',
      }),
    );
  write({ 'certificate-authority': 'ca.pem' }, { tokenFile: 'token' });
  const kc = loadKubeConfig({ kubeconfig: file });
  t.equal(kc.server, server.url);
  t.equal(kc.ca?.toString(), server.caPem, 'certificate-authority read relative to the kubeconfig');
  t.same(await syncsWith(t, server, kc), ['shop/web-1'], 'synced with the token from tokenFile');
  writeFileSync(join(dir, 'token'), 'rotated\n');
  t.equal(kc.authorization(), 'Bearer rotated', 'tokenFile is read again for the next request');

  // Any certificate and key do: the point is that they reach the connection pool's TLS options.
  const { keyPem: key, certPem: cert } = makeTestPki();
  write(
    { 'insecure-skip-tls-verify': true },
    {
      'client-certificate-data': Buffer.from(cert).toString('base64'),
      'client-key-data': Buffer.from(key).toString('base64'),
    },
  );
  const insecure = loadKubeConfig({ kubeconfig: file });
  t.equal(insecure.insecureSkipTlsVerify, true);
  t.equal(insecure.authorization(), undefined, 'no token: client certificate only');
  t.equal((insecure.agent() as unknown as { options: { cert?: Buffer } }).options.cert?.toString(), cert);

  for (const [where, field, value] of [
    ['user', 'exec', { command: 'aws', apiVersion: 'client.authentication.k8s.io/v1' }],
    ['user', 'auth-provider', { name: 'gcp' }],
    ['user', 'username', 'admin'],
    ['cluster', 'proxy-url', 'http://proxy:3128'],
  ] as const) {
    if (where === 'user') write({}, { [field]: value });
    else write({ [field]: value }, {});
    t.throws(
      () => loadKubeConfig({ kubeconfig: file }),
      { name: 'KubeConfigError', message: new RegExp(`${where} field "${field}" is not supported`) },
      `${where}.${field} is refused by name`,
    );
  }
  write({}, { tokenFile: 'no-such-token' });
  t.throws(() => loadKubeConfig({ kubeconfig: file }), { name: 'KubeConfigError', message: /tokenFile/ });
  writeFileSync(
    file,
    stringify({
      clusters: [{ name: 'c', cluster: { server: 'ftp://x' } }],
      contexts: [{ name: 'x', context: { cluster: 'c' } }],
    }),
  );
  t.throws(() => loadKubeConfig({ kubeconfig: file }), { name: 'KubeConfigError', message: /neither https/ });
});

t.test('node name: --node, else NODE_NAME, else the hostname (lowercased)', async (t) => {
  t.equal(resolveNodeName({ flag: 'n-flag', env: { NODE_NAME: 'n-env' }, hostname: () => 'host' }), 'n-flag');
  t.equal(resolveNodeName({ flag: '', env: { NODE_NAME: 'n-env' }, hostname: () => 'host' }), 'n-env');
  t.equal(resolveNodeName({ env: {}, hostname: () => 'Worker-1\n' }), 'worker-1');
});

t.test('backoff: exponential, capped, jittered within [d/2, d]', async (t) => {
  const policy = { baseMs: 100, maxMs: 1000 };
  t.equal(
    backoffDelay(policy, 0, () => 1),
    100,
  );
  t.equal(
    backoffDelay(policy, 0, () => 0),
    50,
  );
  t.equal(
    backoffDelay(policy, 3, () => 1),
    800,
  );
  t.equal(
    backoffDelay(policy, 10, () => 1),
    1000,
    'capped',
  );
  t.equal(
    backoffDelay(policy, 500, () => 0),
    500,
    'no overflow for huge attempts',
  );
});
