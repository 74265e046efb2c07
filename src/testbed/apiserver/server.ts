// A Kubernetes API server for the testbed (tests, the benchmark, `ambpf run --kubeconfig` by hand): core/v1 Pods and Namespaces, list + watch over HTTPS with a
// bearer token, following "Kubernetes API Concepts" (kubernetes.io/docs/reference/using-api/api-concepts):
//  - lists carry metadata.resourceVersion; items have no kind/apiVersion (like the real server);
//    limit/continue paging; an exact list (limit + resourceVersion, or a continue token) from a
//    compacted version is 410 Gone with a Status (reason Expired);
//  - watch (`?watch=1|true`): no resourceVersion or "0" starts with synthetic ADDED events for the
//    current state; resourceVersion=N streams every change after N, or, when N is older than the
//    retained history, one ERROR event holding a 410 Expired Status, then closes;
//  - allowWatchBookmarks=true: BOOKMARK events whose object has only metadata.resourceVersion;
//  - fieldSelector / labelSelector filter lists and watches; with a selector an object that stops
//    matching is a DELETED event, one that starts matching an ADDED (like the watch cache);
//  - timeoutSeconds ends a watch cleanly;
//  - PATCH of pods/{name}/status with a JSON merge patch (patch.ts): metadata and status change,
//    resourceVersion bumps, watches see MODIFIED; a patch that changes nothing writes nothing. Other
//    patch types are 415 here (the real server takes them too; nothing of ambpf sends them).
// Knobs for failure tests: drop watch connections, stall watches, compact history, fail the next N
// requests, take the whole server down and up again on the same port.
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { stringify } from 'yaml';
import { makeTestPki, type TestPki } from './tls.ts';
import { ObjectStore, StoreError, keyOf, type Kind, type KubeObject, type StoredEvent } from './store.ts';
import { parseFieldSelector, parseLabelSelector, SelectorError, type Matcher } from './selectors.ts';
import { MERGE_PATCH, patchPodStatus } from './patch.ts';

/** Bodies above this are refused (413), like the real server's limit on request size (3 MiB there). */
const MAX_BODY_BYTES = 1 << 20;

export interface RequestRecord {
  readonly method: string;
  readonly path: string;
  readonly query: Readonly<Record<string, string>>;
  readonly watch: boolean;
  status: number;
}

export interface FakeApiServerOptions {
  readonly token?: string;
  /** Send a BOOKMARK to bookmark-enabled watches this often (ms); 0 = only on `sendBookmarks()`. */
  readonly bookmarkIntervalMs?: number;
  /** Port on 127.0.0.1; 0 (default) picks a free one. */
  readonly port?: number;
}

export interface StallOptions {
  /** New watches get their 200 headers and then nothing (default), or not even headers. */
  readonly headers?: boolean;
}

interface WatchEvent {
  readonly type: string;
  readonly object: KubeObject;
}

interface OpenWatch {
  readonly res: ServerResponse;
  readonly kind: Kind;
  readonly bookmarks: boolean;
  /** What this watch sees of a stored event (after kind, namespace and selectors), if anything. */
  readonly filter: (e: StoredEvent) => WatchEvent | undefined;
  stalled: boolean;
  close(): void;
}

export interface Status {
  readonly kind: 'Status';
  readonly apiVersion: 'v1';
  readonly metadata: Record<string, never>;
  readonly status: 'Failure';
  readonly message: string;
  readonly reason: string;
  readonly code: number;
}

function status(code: number, reason: string, message: string): Status {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code };
}

interface Route {
  readonly kind: Kind;
  readonly namespace: string | undefined;
  readonly name: string | undefined;
  /** `status` for /api/v1/namespaces/{ns}/pods/{name}/status. */
  readonly subresource: 'status' | undefined;
}

function route(path: string): Route | undefined {
  const parts = path
    .split('/')
    .filter((p) => p !== '')
    .map(decodeURIComponent);
  if (parts[0] !== 'api' || parts[1] !== 'v1') return undefined;
  const rest = parts.slice(2);
  const base = { namespace: undefined, name: undefined, subresource: undefined };
  if (rest.length === 1 && rest[0] === 'pods') return { ...base, kind: 'Pod' };
  if (rest[0] === 'namespaces') {
    if (rest.length === 1) return { ...base, kind: 'Namespace' };
    if (rest.length === 2) return { ...base, kind: 'Namespace', name: rest[1] };
    if (rest[2] === 'pods' && rest.length <= 4) return { ...base, kind: 'Pod', namespace: rest[1], name: rest[3] };
    if (rest[2] === 'pods' && rest.length === 5 && rest[4] === 'status')
      return { kind: 'Pod', namespace: rest[1], name: rest[3], subresource: 'status' };
  }
  return undefined;
}

/** Items of a list have no TypeMeta on the wire: the list's kind says what they are. */
function asListItem(obj: KubeObject): Record<string, unknown> {
  const { kind: _k, apiVersion: _a, ...rest } = obj;
  return rest;
}

export class FakeApiServer {
  readonly store = new ObjectStore();
  readonly requests: RequestRecord[] = [];
  private readonly pki: TestPki;
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private readonly watches = new Set<OpenWatch>();
  private readonly held = new Set<ServerResponse>();
  private readonly bookmarkTimer: NodeJS.Timeout | undefined;
  private token: string;
  private portNumber = 0;
  private failures: { remaining: number; code: number } = { remaining: 0, code: 500 };
  private stallMode: StallOptions | undefined;

  private constructor(options: FakeApiServerOptions) {
    this.pki = makeTestPki();
    this.token = options.token ?? 'ambpf-test-token';
    this.server = createServer({ key: this.pki.keyPem, cert: this.pki.certPem }, (req, res) => this.handle(req, res));
    this.server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    this.store.subscribe((e) => this.broadcast(e));
    const interval = options.bookmarkIntervalMs ?? 0;
    if (interval > 0) {
      this.bookmarkTimer = setInterval(() => this.sendBookmarks(), interval);
      this.bookmarkTimer.unref();
    }
  }

  static async start(options: FakeApiServerOptions = {}): Promise<FakeApiServer> {
    const s = new FakeApiServer(options);
    await s.listen(options.port ?? 0);
    return s;
  }

  get port(): number {
    return this.portNumber;
  }

  get url(): string {
    return `https://127.0.0.1:${this.portNumber}`;
  }

  get caPem(): string {
    return this.pki.caPem;
  }

  get bearerToken(): string {
    return this.token;
  }

  /** Replaces the accepted token (a rotated service-account token, or a revoked one). */
  setToken(token: string): void {
    this.token = token;
  }

  get openWatches(): number {
    return [...this.watches].filter((w) => !w.stalled).length;
  }

  /** A kubeconfig (as an object) that reaches this server with its CA and token. */
  kubeconfig(): Record<string, unknown> {
    return {
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [
        {
          name: 'fake',
          cluster: { server: this.url, 'certificate-authority-data': Buffer.from(this.pki.caPem).toString('base64') },
        },
      ],
      users: [{ name: 'fake', user: { token: this.token } }],
      contexts: [{ name: 'fake', context: { cluster: 'fake', user: 'fake' } }],
      'current-context': 'fake',
    };
  }

  kubeconfigYaml(): string {
    return stringify(this.kubeconfig());
  }

  // --- mutations (each bumps the resourceVersion and reaches open watches at once) ---
  addPod(pod: Record<string, unknown>): KubeObject {
    return this.store.create('Pod', pod);
  }
  updatePod(pod: Record<string, unknown>): KubeObject {
    return this.store.update('Pod', pod);
  }
  deletePod(namespace: string, name: string): KubeObject {
    return this.store.delete('Pod', namespace, name);
  }
  /** The stored pod (what a GET returns), or undefined. */
  getPod(namespace: string, name: string): KubeObject | undefined {
    return this.store.get('Pod', namespace, name);
  }
  addNamespace(ns: Record<string, unknown>): KubeObject {
    return this.store.create('Namespace', ns);
  }
  updateNamespace(ns: Record<string, unknown>): KubeObject {
    return this.store.update('Namespace', ns);
  }
  deleteNamespace(name: string): KubeObject {
    return this.store.delete('Namespace', '', name);
  }

  // --- knobs ---
  /** Cuts every open watch connection: abruptly (TCP reset, the default) or with a clean end of stream. */
  dropWatches(options: { graceful?: boolean } = {}): void {
    for (const w of [...this.watches]) {
      if (options.graceful) w.close();
      else w.res.destroy();
    }
  }

  /** Watches go silent: open ones send nothing more (not even bookmarks); new ones are accepted and then starve. Lists still work. */
  stall(options: StallOptions = {}): void {
    this.stallMode = options;
    for (const w of this.watches) w.stalled = true;
  }

  unstall(): void {
    this.stallMode = undefined;
  }

  /** Compacts history: a watch resumed from any version before now gets a 410 Expired ERROR event. */
  compact(): void {
    this.store.compact();
  }

  /** Ends every open watch with an ERROR event holding 410 Expired (the server lost the window), after compacting. */
  expireWatches(): void {
    this.store.compact();
    for (const w of [...this.watches]) {
      if (w.stalled) continue;
      this.writeEvent(
        w.res,
        'ERROR',
        status(
          410,
          'Expired',
          `too old resource version: ${this.store.compactedVersion - 1} (${this.store.compactedVersion})`,
        ),
      );
      w.close();
    }
  }

  /** The next `count` authenticated requests (lists or watches) fail with `code` and an InternalError Status. */
  failNext(count: number, code = 500): void {
    this.failures = { remaining: count, code };
  }

  /** Writes `line` verbatim into every open watch stream of `kind`: garbage a client must survive. */
  injectWatchLine(kind: Kind, line: string): void {
    for (const w of this.watches) {
      if (w.kind === kind && !w.stalled && !w.res.writableEnded) w.res.write(line + '\n');
    }
  }

  /** Sends a BOOKMARK at the current resourceVersion to every watch that asked for them. */
  sendBookmarks(): void {
    for (const w of this.watches) {
      if (!w.bookmarks || w.stalled) continue;
      this.writeEvent(w.res, 'BOOKMARK', {
        kind: w.kind,
        apiVersion: 'v1',
        metadata: { resourceVersion: String(this.store.resourceVersion) },
      });
    }
  }

  /** The server goes away: stops listening (connection refused) and cuts every connection. */
  async down(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.killConnections();
    });
  }

  /** Listens again on the same port. */
  async up(): Promise<void> {
    await this.listen(this.portNumber);
  }

  async close(): Promise<void> {
    if (this.bookmarkTimer) clearInterval(this.bookmarkTimer);
    if (!this.server.listening) {
      this.killConnections();
      return;
    }
    await this.down();
  }

  private killConnections(): void {
    for (const w of [...this.watches]) w.res.destroy();
    for (const r of this.held) r.destroy();
    this.held.clear();
    for (const s of this.sockets) s.destroy();
  }

  private listen(port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, '127.0.0.1', () => {
        this.server.off('error', reject);
        const addr = this.server.address();
        if (addr !== null && typeof addr === 'object') this.portNumber = addr.port;
        resolve();
      });
    });
  }

  // --- HTTP ---
  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'https://fake');
    const q = url.searchParams;
    const watch = q.get('watch') === 'true' || q.get('watch') === '1';
    const record: RequestRecord = {
      method: req.method ?? '',
      path: url.pathname,
      query: Object.fromEntries(q),
      watch,
      status: 0,
    };
    this.requests.push(record);
    const fail = (s: Status): void => {
      record.status = s.code;
      this.sendJson(res, s.code, s);
    };
    if (req.headers.authorization !== `Bearer ${this.token}`) return fail(status(401, 'Unauthorized', 'Unauthorized'));
    const r = route(url.pathname);
    const patchable = r?.subresource === 'status' && r.name !== undefined;
    if (req.method !== 'GET' && !(req.method === 'PATCH' && patchable)) {
      return fail(status(405, 'MethodNotAllowed', `the server does not allow this method on the requested resource`));
    }
    if (!r) return fail(status(404, 'NotFound', 'the server could not find the requested resource'));
    if (this.failures.remaining > 0) {
      this.failures.remaining--;
      return fail(
        status(
          this.failures.code,
          'InternalError',
          `Internal error occurred: injected failure (${this.failures.code})`,
        ),
      );
    }
    if (req.method === 'PATCH') {
      void this.servePatch(req, r.namespace ?? '', r.name ?? '').then((out) => {
        record.status = out.kind === 'Status' ? (out as Status).code : 200;
        this.sendJson(res, record.status, out);
      });
      return;
    }
    let match: Matcher;
    try {
      const byField = parseFieldSelector(q.get('fieldSelector'), r.kind);
      const byLabel = parseLabelSelector(q.get('labelSelector'));
      const inNs: Matcher = (o) =>
        r.namespace === undefined || (o['metadata'] as Record<string, unknown>)['namespace'] === r.namespace;
      match = (o) => inNs(o) && byField(o) && byLabel(o);
    } catch (err) {
      if (err instanceof SelectorError) return fail(status(400, 'BadRequest', err.message));
      throw err;
    }
    if (r.name !== undefined && !watch) {
      const obj = this.store.get(r.kind, r.namespace ?? '', r.name);
      if (!obj)
        return fail(status(404, 'NotFound', `${r.kind === 'Pod' ? 'pods' : 'namespaces'} "${r.name}" not found`));
      record.status = 200;
      return this.sendJson(res, 200, obj);
    }
    if (watch) {
      record.status = 200;
      return this.serveWatch(req, res, r, match, q);
    }
    const out = this.serveList(r, match, q);
    record.status = out.kind === 'Status' ? (out as Status).code : 200;
    this.sendJson(res, record.status, out);
  }

  /** PATCH pods/{name}/status: a merge patch applied the way patch.ts describes. */
  private async servePatch(req: IncomingMessage, namespace: string, name: string): Promise<Status | KubeObject> {
    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    let text: string;
    try {
      text = await readBody(req, MAX_BODY_BYTES);
    } catch (err) {
      return err instanceof BodyTooLarge
        ? status(413, 'RequestEntityTooLarge', err.message)
        : status(400, 'BadRequest', (err as Error).message);
    }
    if (type !== MERGE_PATCH) {
      return status(
        415,
        'UnsupportedMediaType',
        `the fake API server takes only ${MERGE_PATCH} patches, got "${type}"`,
      );
    }
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch (err) {
      return status(400, 'BadRequest', `error decoding patch: ${(err as Error).message}`);
    }
    const pod = this.store.get('Pod', namespace, name);
    if (!pod) return status(404, 'NotFound', `pods "${name}" not found`);
    const out = patchPodStatus(pod, body, namespace, name);
    if (!out.ok) return status(out.refusal.code, out.refusal.reason, out.refusal.message);
    return out.changed ? this.store.update('Pod', out.object) : pod;
  }

  private serveList(r: Route, match: Matcher, q: URLSearchParams): Status | Record<string, unknown> {
    const rvParam = q.get('resourceVersion') ?? '';
    const limit = Number(q.get('limit') ?? '0');
    const cont = q.get('continue') ?? '';
    let atRv = this.store.resourceVersion;
    let after = '';
    let exact = false;
    if (cont !== '') {
      if (rvParam !== '' && rvParam !== '0')
        return status(400, 'BadRequest', 'specifying resource version is not allowed when using continue');
      try {
        const tok = JSON.parse(Buffer.from(cont, 'base64url').toString()) as { rv: number; start: string };
        atRv = tok.rv;
        after = tok.start;
        exact = true;
      } catch {
        return status(400, 'BadRequest', 'continue key is not valid');
      }
    } else if (rvParam !== '' && rvParam !== '0') {
      const n = Number(rvParam);
      if (!Number.isInteger(n) || n < 0) return status(400, 'BadRequest', `invalid resource version: ${rvParam}`);
      if (n > this.store.resourceVersion)
        return status(504, 'Timeout', `Too large resource version: ${n}, current: ${this.store.resourceVersion}`);
      // limit set (or resourceVersionMatch=Exact) means "Exact"; otherwise "Not older than": serve the newest.
      if (limit > 0 || q.get('resourceVersionMatch') === 'Exact') {
        atRv = n;
        exact = true;
      }
    }
    if (exact && atRv < this.store.compactedVersion) {
      return cont !== ''
        ? status(
            410,
            'Expired',
            'The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.',
          )
        : status(410, 'Expired', `too old resource version: ${atRv} (${this.store.compactedVersion})`);
    }
    const all = (exact ? this.store.listAt(r.kind, atRv) : this.store.list(r.kind))
      .filter(match)
      .sort((a, b) => (keyOf(a) < keyOf(b) ? -1 : keyOf(a) > keyOf(b) ? 1 : 0));
    let items = after === '' ? all : all.filter((o) => keyOf(o) > after);
    const metadata: Record<string, unknown> = { resourceVersion: String(atRv) };
    if (limit > 0 && items.length > limit) {
      const rest = items.length - limit;
      items = items.slice(0, limit);
      metadata['continue'] = Buffer.from(JSON.stringify({ rv: atRv, start: keyOf(items[items.length - 1]!) })).toString(
        'base64url',
      );
      metadata['remainingItemCount'] = rest;
    }
    return { kind: `${r.kind}List`, apiVersion: 'v1', metadata, items: items.map(asListItem) };
  }

  private serveWatch(req: IncomingMessage, res: ServerResponse, r: Route, match: Matcher, q: URLSearchParams): void {
    const nameMatch: Matcher = (o) =>
      r.name === undefined || (o['metadata'] as Record<string, unknown>)['name'] === r.name;
    const m: Matcher = (o) => nameMatch(o) && match(o);
    if (this.stallMode && this.stallMode.headers === false) {
      // Accepted, then nothing at all: not even the status line.
      this.held.add(res);
      res.on('close', () => this.held.delete(res));
      return;
    }
    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache, private' });
    res.flushHeaders();
    const w: OpenWatch = {
      res,
      kind: r.kind,
      filter: (e) => this.transform(e, r.kind, m),
      bookmarks: q.get('allowWatchBookmarks') === 'true',
      stalled: this.stallMode !== undefined,
      close: () => {
        this.watches.delete(w);
        if (!res.writableEnded) res.end();
      },
    };
    this.watches.add(w);
    let timeout: NodeJS.Timeout | undefined;
    res.on('close', () => {
      this.watches.delete(w);
      if (timeout) clearTimeout(timeout);
    });
    req.on('close', () => this.watches.delete(w));
    const seconds = Number(q.get('timeoutSeconds') ?? '0');
    if (seconds > 0) timeout = setTimeout(() => w.close(), seconds * 1000);
    if (w.stalled) return;

    const rvParam = q.get('resourceVersion') ?? '';
    if (rvParam === '' || rvParam === '0') {
      // "Get State and Start at Most Recent/Any": synthetic ADDED for what exists now.
      for (const obj of this.store.list(r.kind).filter(m)) this.writeEvent(res, 'ADDED', obj);
      return;
    }
    const from = Number(rvParam);
    if (!Number.isInteger(from) || from < 0) {
      this.writeEvent(res, 'ERROR', status(400, 'BadRequest', `invalid resource version: ${rvParam}`));
      return w.close();
    }
    let events: StoredEvent[];
    try {
      events = this.store.since(from);
    } catch (err) {
      if (!(err instanceof StoreError)) throw err;
      // The docs' 410: a 200 stream whose only event is an ERROR with an Expired Status.
      this.writeEvent(
        res,
        'ERROR',
        status(410, 'Expired', `too old resource version: ${from} (${this.store.compactedVersion})`),
      );
      return w.close();
    }
    for (const e of events) {
      const out = w.filter(e);
      if (out) this.writeEvent(res, out.type, out.object);
    }
  }

  /** What a watch of `kind` matching `m` sees of a stored event (the watch cache's rules). */
  private transform(e: StoredEvent, kind: Kind, m: Matcher): WatchEvent | undefined {
    if (e.kind !== kind) return undefined;
    const now = e.type !== 'DELETED' && m(e.object);
    const before = e.prev !== undefined && m(e.prev);
    if (e.type === 'DELETED') return before ? { type: 'DELETED', object: e.object } : undefined;
    if (now && before) return { type: 'MODIFIED', object: e.object };
    if (now) return { type: 'ADDED', object: e.object };
    if (before) {
      // Stopped matching: a DELETED carrying the old content stamped with the new version.
      const old = structuredClone(e.prev!);
      old.metadata['resourceVersion'] = String(e.rv);
      return { type: 'DELETED', object: old };
    }
    return undefined;
  }

  private broadcast(e: StoredEvent): void {
    for (const w of this.watches) {
      if (w.stalled) continue;
      const out = w.filter(e);
      if (out) this.writeEvent(w.res, out.type, out.object);
    }
  }

  private writeEvent(res: ServerResponse, type: string, object: unknown): void {
    if (res.writableEnded || res.destroyed) return;
    // One JSON document per chunk, newline-terminated, like the apiserver's JSON stream encoder.
    res.write(JSON.stringify({ type, object }) + '\n');
  }

  private sendJson(res: ServerResponse, code: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
    res.end(text);
  }
}

class BodyTooLarge extends Error {
  override readonly name = 'BodyTooLarge';
}

/** The request body as text; rejects once it passes `limit` bytes. */
function readBody(req: IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    // Read to the end either way, so the client gets the 413 rather than a reset.
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= limit) chunks.push(c);
    });
    req.on('end', () => {
      if (size > limit) reject(new BodyTooLarge(`the request body is larger than ${limit} bytes`));
      else resolve(Buffer.concat(chunks).toString('utf8'));
    });
    req.on('error', reject);
  });
}
