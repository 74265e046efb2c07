// The redirection annotation, end to end against the testbed's API server:
//  1. the fake server's PATCH of pods/status, driven with plain HTTPS requests (not our client), does
//     what kube-apiserver does: merge patch applied to metadata and status only, resourceVersion
//     bumped and a MODIFIED event on the watch, nothing written for a patch that changes nothing,
//     the uid as a precondition, 404/405/409/415 where the real server gives them;
//  2. KubePodAnnotator (src/kube's client) takes a pod pending -> enabled -> removed, sends a value only
//     when it changes, retries through API failures and outages without ever blocking the caller,
//     stops at a deleted or replaced pod, and gives up on a server that never answers.
import t from 'tap';
import { request } from 'node:https';
import { createServer, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { KubeConfig } from '../../src/kube/config.ts';
import { pino } from 'pino';
import {
  KubePodAnnotator,
  REDIRECTION_ANNOTATION,
  redirectionFor,
  type KubePodAnnotatorOptions,
  type PodRef,
} from '../../src/agent/annotate.ts';
import type { FakeApiServer } from '../../src/testbed/apiserver/server.ts';
import type { KubeObject } from '../../src/testbed/apiserver/store.ts';
import { kubeConfigFor, pod, startFakeServer, type TestContext } from '../kube/fixtures.ts';
import { eventually, observeFor } from '../helpers/wait.ts';

type Json = Record<string, unknown>;

interface Reply {
  readonly status: number;
  readonly body: Json;
}

/** One HTTPS request to the fake server with its CA and token; the body parsed as JSON. */
function call(
  server: FakeApiServer,
  method: string,
  path: string,
  body?: unknown,
  contentType = 'application/merge-patch+json',
): Promise<Reply> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = {
      Authorization: `Bearer ${server.bearerToken}`,
      Accept: 'application/json',
    };
    if (payload !== undefined) headers['Content-Type'] = contentType;
    const req = request(`${server.url}${path}`, { method, ca: server.caPem, headers, timeout: 10_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as Json }),
      );
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/** The watch events of pods after `rv`, read from a watch the server ends after a second. */
async function eventsSince(server: FakeApiServer, rv: number): Promise<Array<{ type: string; object: KubeObject }>> {
  return new Promise((resolve, reject) => {
    const path = `/api/v1/pods?watch=1&resourceVersion=${rv}&timeoutSeconds=1`;
    const req = request(
      `${server.url}${path}`,
      { ca: server.caPem, headers: { Authorization: `Bearer ${server.bearerToken}` } },
      (res) => {
        let text = '';
        res.on('data', (c: Buffer) => {
          text += c.toString('utf8');
        });
        res.on('end', () =>
          resolve(
            text
              .split('\n')
              .filter((l) => l.trim())
              .map((l) => JSON.parse(l) as { type: string; object: KubeObject }),
          ),
        );
      },
    );
    req.on('error', reject);
    req.end();
  });
}

const annotationsOf = (o: Json | undefined): Record<string, string> =>
  ((o?.['metadata'] as Json | undefined)?.['annotations'] ?? {}) as Record<string, string>;
const rvOf = (o: Json | undefined): number => Number((o?.['metadata'] as Json | undefined)?.['resourceVersion']);
const uidOf = (o: Json): string => String((o['metadata'] as Json)['uid']);
const statusPath = (ns: string, name: string): string => `/api/v1/namespaces/${ns}/pods/${name}/status`;

async function withPod(
  t: TestContext,
  annotations: Record<string, string> = {},
): Promise<{ server: FakeApiServer; web: KubeObject }> {
  const server = await startFakeServer(t);
  const p = pod('web', 'shop', 'node-a', '198.18.1.1');
  (p['metadata'] as Json)['annotations'] = annotations;
  (p['metadata'] as Json)['ownerReferences'] = [
    { apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'web-1', uid: 'rs-1' },
  ];
  return { server, web: server.addPod(p) };
}

// --- 1. the fake server's PATCH of pods/status ---

t.test(
  'a merge patch on pods/status changes the annotation, bumps resourceVersion, and the watch sees MODIFIED',
  async (t) => {
    const { server, web } = await withPod(t, { 'other.example/keep': 'yes' });
    const rv = rvOf(web);
    const set = await call(server, 'PATCH', statusPath('shop', 'web'), {
      metadata: { annotations: { [REDIRECTION_ANNOTATION]: 'enabled' } },
    });
    t.equal(set.status, 200);
    t.same(
      annotationsOf(set.body),
      { 'other.example/keep': 'yes', [REDIRECTION_ANNOTATION]: 'enabled' },
      'merged: the other annotation stays',
    );
    t.equal(rvOf(set.body), rv + 1, 'the answer carries the new resourceVersion');
    const removed = await call(server, 'PATCH', statusPath('shop', 'web'), {
      metadata: { annotations: { [REDIRECTION_ANNOTATION]: null } },
    });
    t.same(annotationsOf(removed.body), { 'other.example/keep': 'yes' }, 'null removes the key');
    const events = await eventsSince(server, rv);
    t.same(
      events.map((e) => [e.type, annotationsOf(e.object)[REDIRECTION_ANNOTATION] ?? null, rvOf(e.object)]),
      [
        ['MODIFIED', 'enabled', rv + 1],
        ['MODIFIED', null, rv + 2],
      ],
      'one MODIFIED per change, in order, with its version',
    );
    const got = await call(server, 'GET', statusPath('shop', 'web'));
    t.equal(got.status, 200, 'GET of pods/status returns the pod');
    t.equal(rvOf(got.body), rv + 2);
  },
);

t.test('a patch that changes nothing writes nothing: same resourceVersion, no event', async (t) => {
  const { server, web } = await withPod(t, { [REDIRECTION_ANNOTATION]: 'enabled' });
  const same = await call(server, 'PATCH', statusPath('shop', 'web'), {
    metadata: { annotations: { [REDIRECTION_ANNOTATION]: 'enabled' } },
  });
  t.equal(same.status, 200);
  t.equal(rvOf(same.body), rvOf(web), 'resourceVersion unchanged');
  t.same(await eventsSince(server, rvOf(web)), [], 'no watch event');
});

t.test('pods/status cannot change the spec or the owners; status and labels do change', async (t) => {
  const { server, web } = await withPod(t);
  const r = await call(server, 'PATCH', statusPath('shop', 'web'), {
    spec: { nodeName: 'elsewhere' },
    metadata: { ownerReferences: null, labels: { extra: 'x' } },
    status: { phase: 'Succeeded' },
  });
  t.equal(r.status, 200);
  t.equal((r.body['spec'] as Json)['nodeName'], 'node-a', 'spec kept');
  t.same((r.body['metadata'] as Json)['ownerReferences'], web.metadata['ownerReferences'], 'ownerReferences kept');
  t.equal(((r.body['metadata'] as Json)['labels'] as Json)['extra'], 'x');
  t.equal((r.body['status'] as Json)['phase'], 'Succeeded');
});

t.test(
  'refusals: another uid 422, stale resourceVersion 409, unknown pod 404, other types 415, other paths 405',
  async (t) => {
    const { server, web } = await withPod(t);
    const patch = (metadata: Json): Json => ({
      metadata: { ...metadata, annotations: { [REDIRECTION_ANNOTATION]: 'enabled' } },
    });
    const cases: Array<[string, Promise<Reply>, number, string]> = [
      [
        "a uid that is not the pod's",
        call(server, 'PATCH', statusPath('shop', 'web'), patch({ uid: 'another-pod' })),
        422,
        'Invalid',
      ],
      [
        'a stale resourceVersion',
        call(server, 'PATCH', statusPath('shop', 'web'), patch({ resourceVersion: '1' })),
        409,
        'Conflict',
      ],
      ['a pod that does not exist', call(server, 'PATCH', statusPath('shop', 'nope'), patch({})), 404, 'NotFound'],
      [
        'a JSON patch',
        call(server, 'PATCH', statusPath('shop', 'web'), [], 'application/json-patch+json'),
        415,
        'UnsupportedMediaType',
      ],
      ['a body that is not an object', call(server, 'PATCH', statusPath('shop', 'web'), ['x']), 400, 'BadRequest'],
      [
        'a non-string annotation',
        call(server, 'PATCH', statusPath('shop', 'web'), { metadata: { annotations: { a: 1 } } }),
        400,
        'BadRequest',
      ],
      [
        'a renamed object',
        call(server, 'PATCH', statusPath('shop', 'web'), { metadata: { name: 'other' } }),
        400,
        'BadRequest',
      ],
      [
        'the pod itself, not its status',
        call(server, 'PATCH', '/api/v1/namespaces/shop/pods/web', patch({})),
        405,
        'MethodNotAllowed',
      ],
    ];
    for (const [what, reply, code, reason] of cases) {
      const r = await reply;
      t.equal(r.status, code, `${what}: ${code}`);
      t.match(r.body, { kind: 'Status', status: 'Failure', code, reason }, `${what}: a ${reason} Status`);
    }
    t.equal(rvOf(server.getPod('shop', 'web')), rvOf(web), 'none of them wrote anything');
    const ok = await call(
      server,
      'PATCH',
      statusPath('shop', 'web'),
      patch({ uid: uidOf(web), resourceVersion: String(rvOf(web)) }),
    );
    t.equal(ok.status, 200, 'the right uid and the current resourceVersion pass');
  },
);

// --- 2. KubePodAnnotator ---

/** Log lines the annotator wrote, parsed. */
class LogLines extends Writable {
  readonly lines: Json[] = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, done: () => void): void {
    for (const l of chunk
      .toString('utf8')
      .split('\n')
      .filter((x) => x.trim()))
      this.lines.push(JSON.parse(l) as Json);
    done();
  }
}

function annotator(
  t: TestContext,
  kc: KubeConfig,
  extra: Partial<KubePodAnnotatorOptions> = {},
): { a: KubePodAnnotator; log: LogLines } {
  const log = new LogLines();
  const a = new KubePodAnnotator({
    kubeConfig: kc,
    log: pino({ level: 'debug' }, log),
    backoff: { baseMs: 20, maxMs: 200 },
    ...extra,
  });
  t.teardown(() => a.close());
  return { a, log };
}

const refOf = (o: KubeObject): PodRef => ({
  namespace: String(o.metadata['namespace']),
  name: String(o.metadata['name']),
  uid: uidOf(o),
});
const patches = (server: FakeApiServer): number => server.requests.filter((r) => r.method === 'PATCH').length;
const valueOn = (server: FakeApiServer, ns: string, name: string): string | undefined =>
  annotationsOf(server.getPod(ns, name))[REDIRECTION_ANNOTATION];

t.test("the ZDS states map to istio-cni's values", async (t) => {
  t.equal(redirectionFor('acked'), 'enabled');
  for (const s of ['pending', 'nacked', 'no-ztunnel'] as const)
    t.equal(redirectionFor(s), 'pending', `${s} -> pending`);
});

t.test('pending -> enabled -> removed, each seen on the watch, other annotations untouched', async (t) => {
  const { server, web } = await withPod(t, { 'other.example/keep': 'yes' });
  const { a } = annotator(t, kubeConfigFor(server));
  const rv = rvOf(web);
  const ref = refOf(web);
  a.set(ref, 'pending');
  await eventually(() => valueOn(server, 'shop', 'web') === 'pending', 10_000, 'pending on the server');
  a.set(ref, 'enabled');
  await eventually(() => valueOn(server, 'shop', 'web') === 'enabled', 10_000, 'enabled on the server');
  a.set(ref, null);
  await eventually(
    () => valueOn(server, 'shop', 'web') === undefined && a.stats().outstanding === 0,
    10_000,
    'annotation removed',
  );
  const events = await eventsSince(server, rv);
  t.same(
    events.map((e) => [e.type, annotationsOf(e.object)[REDIRECTION_ANNOTATION] ?? null]),
    [
      ['MODIFIED', 'pending'],
      ['MODIFIED', 'enabled'],
      ['MODIFIED', null],
    ],
    'three MODIFIED events, in order',
  );
  t.ok(
    events.every((e) => annotationsOf(e.object)['other.example/keep'] === 'yes'),
    'the other annotation never changed',
  );
  const req = server.requests.filter((r) => r.method === 'PATCH');
  t.ok(
    req.every((r) => r.path === statusPath('shop', 'web') && r.status === 200),
    'every patch went to pods/status and was accepted',
  );
  t.same(a.stats(), { patched: 3, failed: 0, gone: 0, outstanding: 0 });
});

t.test(
  'deduplicated: the same value again sends nothing; a burst sends at most the in-flight value and the last',
  async (t) => {
    const { server, web } = await withPod(t);
    const { a } = annotator(t, kubeConfigFor(server));
    const ref = refOf(web);
    a.set(ref, 'enabled');
    await eventually(() => valueOn(server, 'shop', 'web') === 'enabled', 10_000, 'enabled');
    await a.idle();
    const after = patches(server);
    t.equal(after, 1, 'one patch');
    for (let i = 0; i < 20; i++) a.set(ref, 'enabled');
    await a.idle();
    t.equal(patches(server), after, 'twenty repeats of the same value: no request');
    // pending then enabled before the first patch can land: the first goes out, the second is sent
    // after it (one in flight per pod), nothing in between.
    for (let i = 0; i < 10; i++) a.set(ref, i % 2 === 0 ? 'pending' : 'enabled');
    await eventually(
      async () => {
        await a.idle();
        return a.stats().outstanding === 0;
      },
      10_000,
      'burst settled',
    );
    t.equal(valueOn(server, 'shop', 'web'), 'enabled', 'the last value wins');
    t.ok(patches(server) - after <= 2, `a burst of ten cost ${patches(server) - after} patches`);
  },
);

t.test(
  'observe(): what the server already shows is not sent again; a value changed behind our back is put back',
  async (t) => {
    const { server, web } = await withPod(t, { [REDIRECTION_ANNOTATION]: 'enabled' });
    const { a } = annotator(t, kubeConfigFor(server));
    const ref = refOf(web);
    a.observe([{ pod: ref, value: 'enabled' }]);
    a.set(ref, 'enabled');
    await a.idle();
    t.equal(patches(server), 0, 'a restarted agent does not re-patch a pod that is already enabled');
    const cur = server.getPod('shop', 'web')!;
    server.updatePod({ ...cur, metadata: { ...cur.metadata, annotations: {} } });
    a.observe([{ pod: ref, value: null }]);
    await eventually(() => valueOn(server, 'shop', 'web') === 'enabled', 10_000, 'annotation restored');
    t.equal(patches(server), 1);
  },
);

t.test('retried with backoff through 500s and 403s; the 403 names the missing grant', async (t) => {
  const { server, web } = await withPod(t);
  const { a, log } = annotator(t, kubeConfigFor(server));
  server.failNext(3, 500);
  a.set(refOf(web), 'enabled');
  // The server holds the value before the client has read the answer: wait for both.
  await eventually(
    () => valueOn(server, 'shop', 'web') === 'enabled' && a.stats().outstanding === 0,
    10_000,
    'enabled after three 500s',
  );
  t.equal(
    server.requests.filter((r) => r.method === 'PATCH' && r.status === 500).length,
    3,
    'three failed attempts, then success',
  );
  t.match(a.stats(), { patched: 1, failed: 3, outstanding: 0 });
  server.failNext(2, 403);
  a.set(refOf(web), null);
  await eventually(() => valueOn(server, 'shop', 'web') === undefined, 10_000, 'removed after two 403s');
  const warned = log.lines.find((l) => l['code'] === 403 && l['level'] === 40);
  t.match(String(warned?.['msg']), /patch on pods\/status/, 'the warning says which grant to check');
  t.match(String(warned?.['err']), /HTTP 403 InternalError/, "and carries the server's Status");
});

t.test(
  'never blocks the caller: the API server down, set() returns at once, and the value lands when it is back',
  async (t) => {
    const server = await startFakeServer(t);
    const pods = Array.from({ length: 40 }, (_, i) =>
      server.addPod(pod(`p${i}`, 'shop', 'node-a', `198.18.1.${i + 1}`)),
    );
    const { a } = annotator(t, kubeConfigFor(server), { maxInFlight: 3 });
    await server.down();
    const started = process.hrtime.bigint();
    for (const p of pods) t.equal(a.set(refOf(p), 'enabled'), undefined);
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    t.ok(ms < 200, `40 set() calls took ${ms.toFixed(1)} ms with the API server down`);
    t.equal(a.stats().outstanding, 40);
    await eventually(() => a.stats().failed >= 3, 10_000, 'failed attempts while the server is down');
    await server.up();
    await eventually(
      () => pods.every((p) => valueOn(server, 'shop', String(p.metadata['name'])) === 'enabled'),
      20_000,
      'every pod enabled',
    );
    await eventually(() => a.stats().outstanding === 0, 10_000, 'the annotator to know it');
  },
);

t.test('a deleted pod or one re-created under the same name is left alone', async (t) => {
  const { server, web } = await withPod(t);
  const { a } = annotator(t, kubeConfigFor(server));
  const old = refOf(web);
  server.deletePod('shop', 'web');
  const again = server.addPod(pod('web', 'shop', 'node-b', '198.18.2.1'));
  t.not(uidOf(again), old.uid, 'a new pod under the old name');
  a.set(old, 'enabled');
  await eventually(() => a.stats().gone === 1, 10_000, 'the old uid found gone');
  t.equal(valueOn(server, 'shop', 'web'), undefined, 'the new pod was not annotated (422: uid is immutable)');
  const sent = patches(server);
  a.set(old, 'pending');
  await observeFor(300);
  t.equal(patches(server), sent, 'nothing more is sent for a gone uid');
  a.set(old, null);
  t.equal(a.stats().outstanding, 0, 'and its leaving clears it');

  const lone = server.addPod(pod('lone', 'shop', 'node-a', '198.18.1.9'));
  server.deletePod('shop', 'lone');
  a.set(refOf(lone), 'enabled');
  await eventually(() => a.stats().gone === 2, 10_000, 'a deleted pod: 404, gone');
  t.equal(server.requests.filter((r) => r.method === 'PATCH' && r.status === 404).length, 1, 'one 404, no retry');
});

t.test('a server that accepts and never answers: the patch times out and is retried', async (t) => {
  const sockets = new Set<Socket>();
  const silent = createServer((s) => {
    sockets.add(s);
  });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    silent.close();
  });
  const port = (silent.address() as { port: number }).port;
  const kc = new KubeConfig({ server: `https://127.0.0.1:${port}`, insecureSkipTlsVerify: true, token: 'x' });
  const { a, log } = annotator(t, kc, { requestTimeoutMs: 200 });
  a.set({ namespace: 'shop', name: 'web', uid: 'u-1' }, 'enabled');
  await eventually(() => a.stats().failed >= 2, 10_000, 'two timed-out attempts');
  t.ok(sockets.size >= 2, `each attempt opened a connection (${sockets.size})`);
  t.ok(
    log.lines.some((l) => /abort|timeout/i.test(String(l['err']))),
    'the log says it timed out',
  );
  t.equal(a.stats().outstanding, 1, 'still wanted');
});
