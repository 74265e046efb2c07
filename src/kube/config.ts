// Where the API server is and how to authenticate: a kubeconfig file (--kubeconfig) or the pod's
// service account (--in-cluster: token + CA mounted under /var/run/secrets/kubernetes.io/serviceaccount,
// address from KUBERNETES_SERVICE_HOST/PORT). The directory is a parameter so tests can point it at
// files they made.
//
// Only what ambpf needs is read from a kubeconfig: the current context's cluster (server, CA, skip
// verify) and user (bearer token or token file, client certificate and key). Anything that would need
// more machinery (exec and auth-provider plugins, username/password, impersonation, proxies) is refused
// by name at start instead of failing later with a 401.
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, join } from 'node:path';
import { createRequire } from 'node:module';
import type { Agent as HttpAgent } from 'node:http';
import { KubeConfigError } from './errors.ts';
import { OwnWrites } from './own-writes.ts';

// Builtins through getBuiltinModule, not an ES import: that builds node:http's namespace, whose lazy
// WebSocket getters load undici (2 MiB of the loader's heap, issue 20). yaml only for a kubeconfig file.
const { Agent: HttpAgentClass } = process.getBuiltinModule('node:http');
const { Agent: HttpsAgent } = process.getBuiltinModule('node:https');
const parse = (text: string): unknown => (createRequire(import.meta.url)('yaml') as typeof import('yaml')).parse(text);

export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

export interface KubeConfigSource {
  /** Path of a kubeconfig file. */
  readonly kubeconfig?: string | undefined;
  /** Use the pod's service account. */
  readonly inCluster?: boolean | undefined;
  readonly serviceAccountDir?: string;
  readonly env?: NodeJS.ProcessEnv;
}

export interface KubeConfigInit {
  /** https://host:port (or http:// for a test server), without a trailing slash. */
  readonly server: string;
  /** PEM of the CA that signed the server's certificate (default: the system's roots). */
  readonly ca?: Buffer | undefined;
  readonly insecureSkipTlsVerify?: boolean | undefined;
  readonly clientCert?: Buffer | undefined;
  readonly clientKey?: Buffer | undefined;
  readonly token?: string | undefined;
  /** Read before every request (a projected token is rotated by swapping the file). */
  readonly tokenFile?: string | undefined;
}

/**
 * An API server and the credentials for it, with one keep-alive connection pool (the watches hold
 * their connections, lists and patches reuse idle ones), and the annotations written through it (so
 * the watch can tell their echo from news).
 */
export class KubeConfig {
  readonly server: string;
  readonly writes = new OwnWrites();
  readonly ca: Buffer | undefined;
  readonly insecureSkipTlsVerify: boolean;
  readonly #init: KubeConfigInit;
  #token: string | undefined;
  #agent: HttpAgent | undefined;

  constructor(init: KubeConfigInit) {
    let url: URL;
    try {
      url = new URL(init.server);
    } catch {
      throw new KubeConfigError(`the API server address "${init.server}" is not a URL`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:')
      throw new KubeConfigError(`the API server address "${init.server}" is neither https:// nor http://`);
    this.server = init.server.replace(/\/+$/, '');
    this.ca = init.ca;
    this.insecureSkipTlsVerify = init.insecureSkipTlsVerify ?? false;
    this.#init = init;
    this.#token = init.token;
    if (init.tokenFile !== undefined) this.#token = readToken(init.tokenFile);
  }

  /** The Authorization header for the next request; a token file is read again each time. */
  authorization(): string | undefined {
    const file = this.#init.tokenFile;
    if (file !== undefined) {
      try {
        this.#token = readToken(file);
      } catch {
        // Mid-rotation or unreadable: keep the last token; the request says if it is refused.
      }
    }
    return this.#token ? `Bearer ${this.#token}` : undefined;
  }

  /** The connection pool (created on first use). */
  agent(): HttpAgent {
    if (this.#agent) return this.#agent;
    const i = this.#init;
    this.#agent = this.server.startsWith('http:')
      ? new HttpAgentClass({ keepAlive: true })
      : new HttpsAgent({
          keepAlive: true,
          ...(i.ca ? { ca: i.ca } : {}),
          ...(i.clientCert ? { cert: i.clientCert } : {}),
          ...(i.clientKey ? { key: i.clientKey } : {}),
          rejectUnauthorized: !this.insecureSkipTlsVerify,
        });
    return this.#agent;
  }
}

function readToken(file: string): string {
  return readFileSync(file, 'utf8').trim();
}

export function loadKubeConfig(source: KubeConfigSource): KubeConfig {
  if (source.kubeconfig !== undefined && source.inCluster) {
    throw new KubeConfigError('--kubeconfig and --in-cluster exclude each other: pass one of them');
  }
  if (source.kubeconfig !== undefined) return fromFile(source.kubeconfig);
  if (source.inCluster) return inCluster(source.serviceAccountDir ?? SERVICE_ACCOUNT_DIR, source.env ?? process.env);
  throw new KubeConfigError('no Kubernetes credentials: pass --kubeconfig FILE or --in-cluster');
}

function inCluster(dir: string, env: NodeJS.ProcessEnv): KubeConfig {
  const host = env['KUBERNETES_SERVICE_HOST'];
  const port = env['KUBERNETES_SERVICE_PORT'];
  if (!host || !port) {
    throw new KubeConfigError(
      '--in-cluster needs KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT, which Kubernetes sets in every pod; they are not set here',
    );
  }
  const tokenFile = join(dir, 'token');
  const caFile = join(dir, 'ca.crt');
  const missing = (f: string): KubeConfigError =>
    new KubeConfigError(`--in-cluster: ${f} is missing; is a service account token mounted into this pod?`, {
      path: f,
    });
  let ca: Buffer;
  try {
    ca = readFileSync(caFile);
    readToken(tokenFile);
  } catch (err) {
    throw missing((err as { path?: string }).path ?? dir);
  }
  const hostPart = host.includes(':') ? `[${host}]` : host;
  return new KubeConfig({ server: `https://${hostPart}:${port}`, ca, tokenFile });
}

type Json = Record<string, unknown>;

const CLUSTER_FIELDS = new Set([
  'server',
  'certificate-authority',
  'certificate-authority-data',
  'insecure-skip-tls-verify',
  'extensions',
]);
const USER_FIELDS = new Set([
  'token',
  'tokenFile',
  'client-certificate',
  'client-certificate-data',
  'client-key',
  'client-key-data',
  'extensions',
]);

function fromFile(path: string): KubeConfig {
  const bad = (why: string): KubeConfigError => new KubeConfigError(`kubeconfig ${path}: ${why}`, { path });
  let doc: unknown;
  try {
    doc = parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new KubeConfigError(`cannot load kubeconfig ${path}: ${(err as Error).message}`, { path });
  }
  if (!isRecord(doc)) throw new KubeConfigError(`cannot load kubeconfig ${path}: not a YAML mapping`, { path });
  const current = doc['current-context'];
  const contexts = named(doc['contexts']);
  const ctxName = typeof current === 'string' && current !== '' ? current : contexts.keys().next().value;
  const ctx = ctxName === undefined ? undefined : contexts.get(ctxName)?.['context'];
  const cluster = isRecord(ctx) ? named(doc['clusters'], 'cluster').get(String(ctx['cluster'])) : undefined;
  if (!isRecord(ctx) || !cluster || typeof cluster['server'] !== 'string') {
    throw new KubeConfigError(`kubeconfig ${path} has no usable cluster for its current context "${ctxName ?? ''}"`, {
      path,
    });
  }
  const user = ctx['user'] === undefined ? {} : named(doc['users'], 'user').get(String(ctx['user']));
  if (!user) throw bad(`context "${ctxName}" names user "${String(ctx['user'])}", which is not in users`);
  for (const [fields, obj, what] of [
    [CLUSTER_FIELDS, cluster, 'cluster'],
    [USER_FIELDS, user, 'user'],
  ] as const) {
    for (const k of Object.keys(obj)) {
      if (!fields.has(k) && obj[k] !== undefined && obj[k] !== null && obj[k] !== '')
        throw bad(`${what} field "${k}" is not supported by ambpf (it takes ${[...fields].join(', ')})`);
    }
  }
  const base = dirname(path);
  const file = (v: unknown): string => (isAbsolute(String(v)) ? String(v) : join(base, String(v)));
  const material = (dataKey: string, fileKey: string, obj: Json): Buffer | undefined => {
    try {
      if (typeof obj[dataKey] === 'string') return Buffer.from(obj[dataKey], 'base64');
      if (typeof obj[fileKey] === 'string') return readFileSync(file(obj[fileKey]));
    } catch (err) {
      throw bad(`${fileKey}: ${(err as Error).message}`);
    }
    return undefined;
  };
  const tokenFile = typeof user['tokenFile'] === 'string' ? file(user['tokenFile']) : undefined;
  try {
    return new KubeConfig({
      server: cluster['server'],
      ca: material('certificate-authority-data', 'certificate-authority', cluster),
      insecureSkipTlsVerify: cluster['insecure-skip-tls-verify'] === true,
      clientCert: material('client-certificate-data', 'client-certificate', user),
      clientKey: material('client-key-data', 'client-key', user),
      token: typeof user['token'] === 'string' ? user['token'] : undefined,
      tokenFile,
    });
  } catch (err) {
    if (err instanceof KubeConfigError) throw err;
    throw bad(`tokenFile: ${(err as Error).message}`);
  }
}

function isRecord(v: unknown): v is Json {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** A kubeconfig list ([{name, <key>: {...}}]) as a map from name to the entry (or its `key` part). */
function named(list: unknown, key?: string): Map<string, Json> {
  const out = new Map<string, Json>();
  if (!Array.isArray(list)) return out;
  for (const e of list as unknown[]) {
    if (!isRecord(e) || typeof e['name'] !== 'string') continue;
    const v = key === undefined ? e : e[key];
    if (isRecord(v)) out.set(e['name'], v);
  }
  return out;
}
