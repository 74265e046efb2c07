// The fake API server checked with curl (not with our client) against what "Kubernetes API Concepts"
// (kubernetes.io/docs/reference/using-api/api-concepts) says a server does: list + resourceVersion,
// watch from a version, bookmarks with only metadata.resourceVersion, 410 Gone as a Status, chunked
// JSON events, selectors, paging, bearer-token auth.
import t, { type Test } from 'tap';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FakeApiServer } from '../../src/testbed/apiserver/server.ts';
import { namespace, pod, startFakeServer, type TestContext } from './fixtures.ts';
import { eventually } from '../helpers/wait.ts';

interface CurlResult {
  readonly exitCode: number;
  readonly status: number;
  readonly headers: string;
  readonly body: string;
}

type Json = Record<string, unknown>;

async function curl(
  t: TestContext,
  server: FakeApiServer,
  path: string,
  opts: { token?: string | null; maxSeconds?: number } = {},
): Promise<CurlResult> {
  const dir = mkdtempSync(join(tmpdir(), 'ambpf-curl-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const ca = join(dir, 'ca.pem');
  writeFileSync(ca, server.caPem);
  const args = ['-sS', '-N', '-i', '--cacert', ca, '-m', String(opts.maxSeconds ?? 15)];
  const token = opts.token === undefined ? server.bearerToken : opts.token;
  if (token !== null) args.push('-H', `Authorization: Bearer ${token}`);
  args.push(server.url + path);
  return new Promise((resolve) => {
    execFile('curl', args, { encoding: 'utf8' }, (err, stdout) => {
      const exitCode = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      const cut = stdout.indexOf('\r\n\r\n');
      const headers = cut < 0 ? stdout : stdout.slice(0, cut);
      const body = cut < 0 ? '' : stdout.slice(cut + 4);
      const status = Number(/^HTTP\/[\d.]+ (\d{3})/.exec(headers)?.[1] ?? 0);
      resolve({ exitCode, status, headers, body });
    });
  });
}

function events(body: string): Array<{ type: string; object: Json }> {
  return body
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as { type: string; object: Json });
}

const meta = (o: Json): Json => o['metadata'] as Json;

/**
 * Runs `act` once the watch request that curl is about to make has reached the server (it counts
 * requests, so a stalled watch counts too): changes made earlier would not be what the stream shows.
 */
function onceWatching(server: FakeApiServer, act: () => void): void {
  const before = server.requests.filter((r) => r.watch).length;
  // Should curl never get there, its own result fails the test: nothing to add here.
  eventually(() => server.requests.filter((r) => r.watch).length > before, 10_000, "curl's watch request").then(
    act,
    () => {},
  );
}

async function seeded(t: TestContext): Promise<FakeApiServer> {
  const server = await startFakeServer(t);
  server.addNamespace(namespace('shop', { 'istio.io/dataplane-mode': 'ambient' }));
  server.addNamespace(namespace('plain'));
  server.addPod(pod('a', 'shop', 'node-a', '198.18.1.1', { app: 'web', tier: 'front' }));
  server.addPod(pod('b', 'shop', 'node-b', '198.18.2.1', { app: 'db' }));
  server.addPod(pod('c', 'plain', 'node-a', '198.18.1.2', {}));
  return server;
}

function assertStatus(t: Test, body: Json, code: number, reason: string): void {
  t.match(body, { kind: 'Status', apiVersion: 'v1', status: 'Failure', code, reason }, `a ${code} ${reason} Status`);
  t.type(body['message'], 'string');
}

t.test('HTTPS verified by the test CA; bearer token required, 401 carries a Status', async (t) => {
  const server = await seeded(t);
  const ok = await curl(t, server, '/api/v1/namespaces');
  t.equal(ok.exitCode, 0, 'curl verified the certificate for 127.0.0.1 with the CA (no -k)');
  t.equal(ok.status, 200);
  for (const token of ['wrong', null]) {
    const r = await curl(t, server, '/api/v1/pods', { token });
    t.equal(r.status, 401, `token ${String(token)} -> 401`);
    assertStatus(t, JSON.parse(r.body) as Json, 401, 'Unauthorized');
  }
  const missing = await curl(t, server, '/api/v1/services');
  t.equal(missing.status, 404);
  assertStatus(t, JSON.parse(missing.body) as Json, 404, 'NotFound');
});

t.test('list: a typed List with metadata.resourceVersion; namespaced and single-object paths', async (t) => {
  const server = await seeded(t);
  const r = await curl(t, server, '/api/v1/pods');
  t.match(r.headers, /content-type: application\/json/i);
  const list = JSON.parse(r.body) as Json;
  t.equal(list['kind'], 'PodList');
  t.equal(list['apiVersion'], 'v1');
  t.equal(
    meta(list)['resourceVersion'],
    String(server.store.resourceVersion),
    "the list's resourceVersion is the current one, as a string",
  );
  const items = list['items'] as Json[];
  t.equal(items.length, 3);
  t.ok(
    items.every((i) => typeof meta(i)['resourceVersion'] === 'string' && typeof meta(i)['uid'] === 'string'),
    'items carry their own resourceVersion and uid',
  );
  const inShop = JSON.parse((await curl(t, server, '/api/v1/namespaces/shop/pods')).body) as Json;
  t.same((inShop['items'] as Json[]).map((i) => meta(i)['name']).sort(), ['a', 'b']);
  const one = JSON.parse((await curl(t, server, '/api/v1/namespaces/shop/pods/a')).body) as Json;
  t.match(one, { kind: 'Pod', apiVersion: 'v1', metadata: { name: 'a', namespace: 'shop' } });
  const nsList = JSON.parse((await curl(t, server, '/api/v1/namespaces')).body) as Json;
  t.equal(nsList['kind'], 'NamespaceList');
});

t.test("watch from a list's resourceVersion streams every later change as chunked JSON lines", async (t) => {
  const server = await seeded(t);
  const rv = server.store.resourceVersion;
  onceWatching(server, () => {
    server.addPod(pod('d', 'shop', 'node-a', '198.18.1.3'));
    server.updatePod(pod('d', 'shop', 'node-a', '198.18.1.4'));
    server.deletePod('shop', 'd');
  });
  const r = await curl(t, server, `/api/v1/pods?watch=1&resourceVersion=${rv}&timeoutSeconds=1`);
  t.equal(r.exitCode, 0, 'timeoutSeconds ended the stream cleanly');
  t.match(r.headers, /transfer-encoding: chunked/i);
  const ev = events(r.body);
  t.same(
    ev.map((e) => e.type),
    ['ADDED', 'MODIFIED', 'DELETED'],
    'no synthetic ADDED for existing pods, then the three changes',
  );
  t.same(
    ev.map((e) => Number(meta(e.object)['resourceVersion'])),
    [rv + 1, rv + 2, rv + 3],
    'each event carries the version of its change',
  );
  t.ok(
    ev.every((e) => e.object['kind'] === 'Pod' && e.object['apiVersion'] === 'v1'),
    'event objects are full Pods',
  );

  const fromOld = await curl(t, server, `/api/v1/pods?watch=true&resourceVersion=${rv + 1}&timeoutSeconds=1`);
  t.same(
    events(fromOld.body).map((e) => e.type),
    ['MODIFIED', 'DELETED'],
    'resuming replays what came after the given version',
  );
});

t.test('watch without a resourceVersion starts with synthetic ADDED events for the current state', async (t) => {
  const server = await seeded(t);
  const r = await curl(t, server, '/api/v1/pods?watch=1&timeoutSeconds=1&fieldSelector=spec.nodeName%3Dnode-a');
  const ev = events(r.body);
  t.same(
    ev.map((e) => e.type),
    ['ADDED', 'ADDED'],
  );
  t.same(ev.map((e) => meta(e.object)['name']).sort(), ['a', 'c']);
});

t.test('bookmarks only when asked for, with an object holding only metadata.resourceVersion', async (t) => {
  const server = await seeded(t);
  const rv = server.store.resourceVersion;
  onceWatching(server, () => server.sendBookmarks());
  const withBm = await curl(
    t,
    server,
    `/api/v1/pods?watch=1&resourceVersion=${rv}&allowWatchBookmarks=true&timeoutSeconds=1`,
  );
  const ev = events(withBm.body);
  t.equal(ev.length, 1);
  t.equal(ev[0]?.type, 'BOOKMARK');
  t.same(ev[0]?.object, { kind: 'Pod', apiVersion: 'v1', metadata: { resourceVersion: String(rv) } });
  onceWatching(server, () => server.sendBookmarks());
  const without = await curl(t, server, `/api/v1/pods?watch=1&resourceVersion=${rv}&timeoutSeconds=1`);
  t.same(events(without.body), [], 'no BOOKMARK without allowWatchBookmarks');
});

t.test('410 Gone: a watch from a compacted version gets an ERROR event with an Expired Status and ends', async (t) => {
  const server = await seeded(t);
  const rv = server.store.resourceVersion;
  server.addPod(pod('d', 'shop', 'node-a', '198.18.1.3'));
  server.compact();
  const r = await curl(t, server, `/api/v1/pods?watch=1&resourceVersion=${rv}&timeoutSeconds=60`, { maxSeconds: 30 });
  t.equal(r.exitCode, 0, 'the server closed the stream itself (long before timeoutSeconds)');
  t.equal(r.status, 200, 'a watch reports 410 inside the stream');
  const ev = events(r.body);
  t.equal(ev.length, 1);
  t.equal(ev[0]?.type, 'ERROR');
  assertStatus(t, ev[0]!.object, 410, 'Expired');
  const current = await curl(
    t,
    server,
    `/api/v1/pods?watch=1&resourceVersion=${server.store.resourceVersion}&timeoutSeconds=1`,
  );
  t.same(events(current.body), [], 'a watch from the current version works after compaction');

  // An exact list (limit + resourceVersion) from a compacted version is an HTTP 410.
  const list = await curl(t, server, `/api/v1/pods?limit=10&resourceVersion=${rv}`);
  t.equal(list.status, 410);
  assertStatus(t, JSON.parse(list.body) as Json, 410, 'Expired');
  // Without limit, a resourceVersion means "not older than": served from the newest state.
  const notOlder = await curl(t, server, `/api/v1/pods?resourceVersion=${rv}`);
  t.equal(notOlder.status, 200);
});

t.test("paging: limit/continue keep the first page's resourceVersion; an expired continue token is 410", async (t) => {
  const server = await seeded(t);
  const first = JSON.parse((await curl(t, server, '/api/v1/pods?limit=2')).body) as Json;
  t.equal((first['items'] as Json[]).length, 2);
  const token = meta(first)['continue'];
  t.type(token, 'string');
  t.equal(meta(first)['remainingItemCount'], 1);
  server.addPod(pod('zz-new', 'shop', 'node-a', '198.18.1.9')); // after the snapshot: not in the next page
  const second = JSON.parse((await curl(t, server, `/api/v1/pods?limit=2&continue=${String(token)}`)).body) as Json;
  t.same(
    (second['items'] as Json[]).map((i) => meta(i)['name']),
    ['b'],
    'the rest of the consistent snapshot only',
  );
  t.equal(meta(second)['resourceVersion'], meta(first)['resourceVersion']);
  t.equal(meta(second)['continue'], undefined, 'no continue on the last page');
  server.compact();
  const expired = await curl(t, server, `/api/v1/pods?limit=2&continue=${String(token)}`);
  t.equal(expired.status, 410);
  assertStatus(t, JSON.parse(expired.body) as Json, 410, 'Expired');
});

t.test('field and label selectors filter lists; bad selectors are 400 BadRequest', async (t) => {
  const server = await seeded(t);
  const names = async (query: string): Promise<string[]> => {
    const r = await curl(t, server, `/api/v1/pods?${query}`);
    t.equal(r.status, 200, query);
    return ((JSON.parse(r.body) as Json)['items'] as Json[]).map((i) => String(meta(i)['name'])).sort();
  };
  const q = (s: string): string => encodeURIComponent(s);
  t.same(await names(`fieldSelector=${q('spec.nodeName=node-a')}`), ['a', 'c']);
  t.same(await names(`fieldSelector=${q('spec.nodeName!=node-a')}`), ['b']);
  t.same(await names(`fieldSelector=${q('metadata.namespace=shop,metadata.name==b')}`), ['b']);
  t.same(await names(`labelSelector=${q('app=web')}`), ['a']);
  t.same(await names(`labelSelector=${q('app==db')}`), ['b']);
  t.same(await names(`labelSelector=${q('app!=web')}`), ['b', 'c'], '!= also matches pods without the label');
  t.same(await names(`labelSelector=${q('app in (web, db)')}`), ['a', 'b']);
  t.same(await names(`labelSelector=${q('app notin (web)')}`), ['b', 'c']);
  t.same(await names(`labelSelector=${q('tier')}`), ['a']);
  t.same(await names(`labelSelector=${q('!tier')}`), ['b', 'c']);
  t.same(await names(`labelSelector=${q('app,!tier')}`), ['b']);
  for (const bad of [
    `fieldSelector=${q('spec.containers=x')}`,
    `labelSelector=${q('app in web')}`,
    `labelSelector=${q('app=(x')}`,
  ]) {
    const r = await curl(t, server, `/api/v1/pods?${bad}`);
    t.equal(r.status, 400, bad);
    assertStatus(t, JSON.parse(r.body) as Json, 400, 'BadRequest');
  }
  const ns = await curl(t, server, `/api/v1/namespaces?labelSelector=${q('istio.io/dataplane-mode=ambient')}`);
  t.same(
    ((JSON.parse(ns.body) as Json)['items'] as Json[]).map((i) => meta(i)['name']),
    ['shop'],
  );
});

t.test('a watch with a selector sees objects entering as ADDED and leaving as DELETED', async (t) => {
  const server = await seeded(t);
  const rv = server.store.resourceVersion;
  onceWatching(server, () => {
    server.updatePod(pod('a', 'shop', 'node-a', '198.18.1.1', { app: 'other' })); // leaves app=web
    server.updatePod(pod('b', 'shop', 'node-b', '198.18.2.1', { app: 'web' })); // enters
    server.updatePod(pod('c', 'plain', 'node-a', '198.18.1.2', { x: 'y' })); // never matches
  });
  const r = await curl(
    t,
    server,
    `/api/v1/pods?watch=1&resourceVersion=${rv}&timeoutSeconds=1&labelSelector=app%3Dweb`,
  );
  const ev = events(r.body);
  t.same(
    ev.map((e) => `${e.type} ${String(meta(e.object)['name'])}`),
    ['DELETED a', 'ADDED b'],
  );
  t.same(meta(ev[0]!.object)['labels'], { app: 'web', tier: 'front' }, 'the DELETED carries the last matching content');
  t.equal(meta(ev[0]!.object)['resourceVersion'], String(rv + 1), '...stamped with the version of the change');
});

t.test(
  'knobs: failNext answers 500 Status; stall starves watches but not lists; dropWatches cuts streams',
  async (t) => {
    const server = await seeded(t);
    server.failNext(2);
    for (let i = 0; i < 2; i++) {
      const r = await curl(t, server, '/api/v1/pods');
      t.equal(r.status, 500);
      assertStatus(t, JSON.parse(r.body) as Json, 500, 'InternalError');
    }
    t.equal((await curl(t, server, '/api/v1/pods')).status, 200, 'then it recovers');

    server.stall();
    onceWatching(server, () => server.addPod(pod('during-stall', 'shop', 'node-a', '198.18.1.7')));
    // What is tested is that nothing comes: curl gives up after its 3 s.
    const stalled = await curl(t, server, `/api/v1/pods?watch=1&resourceVersion=${server.store.resourceVersion}`, {
      maxSeconds: 3,
    });
    t.equal(stalled.status, 200, 'the stalled watch was accepted');
    t.equal(stalled.body, '', '...and sent nothing');
    t.equal(stalled.exitCode, 28, 'curl gave up waiting');
    t.equal((await curl(t, server, '/api/v1/pods')).status, 200, 'lists still work while watches stall');
    server.unstall();

    eventually(() => server.openWatches === 1, 10_000, "curl's watch to be open").then(
      () => server.dropWatches(),
      () => {},
    );
    const dropped = await curl(t, server, `/api/v1/pods?watch=1&resourceVersion=${server.store.resourceVersion}`, {
      maxSeconds: 20,
    });
    t.not(dropped.exitCode, 0, 'curl saw the connection cut');
    t.not(dropped.exitCode, 28, '...not a timeout');
  },
);
