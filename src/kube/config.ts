// Where the API server is and how to authenticate: a kubeconfig file (--kubeconfig) or the pod's
// service account (--in-cluster: token + CA mounted under /var/run/secrets/kubernetes.io/serviceaccount,
// address from KUBERNETES_SERVICE_HOST/PORT). The directory is a parameter so tests can point it at
// files they made.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { KubeConfig, type RequestContext } from '@kubernetes/client-node';
import { KubeConfigError } from './errors.ts';

export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

export interface KubeConfigSource {
  /** Path of a kubeconfig file. */
  readonly kubeconfig?: string | undefined;
  /** Use the pod's service account. */
  readonly inCluster?: boolean | undefined;
  readonly serviceAccountDir?: string;
  readonly env?: NodeJS.ProcessEnv;
}

export function loadKubeConfig(source: KubeConfigSource): KubeConfig {
  if (source.kubeconfig !== undefined && source.inCluster) {
    throw new KubeConfigError('--kubeconfig and --in-cluster exclude each other: pass one of them');
  }
  if (source.kubeconfig !== undefined) return fromFile(source.kubeconfig);
  if (source.inCluster) return inCluster(source.serviceAccountDir ?? SERVICE_ACCOUNT_DIR, source.env ?? process.env);
  throw new KubeConfigError('no Kubernetes credentials: pass --kubeconfig FILE or --in-cluster');
}

function fromFile(path: string): KubeConfig {
  const kc = new KubeConfig();
  try {
    kc.loadFromFile(path);
  } catch (err) {
    throw new KubeConfigError(`cannot load kubeconfig ${path}: ${(err as Error).message}`, { path });
  }
  const cluster = kc.getCurrentCluster();
  if (!cluster) {
    throw new KubeConfigError(
      `kubeconfig ${path} has no usable cluster for its current context "${kc.getCurrentContext()}"`,
      { path },
    );
  }
  return kc;
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
  for (const f of [tokenFile, caFile]) {
    if (!existsSync(f))
      throw new KubeConfigError(`--in-cluster: ${f} is missing; is a service account token mounted into this pod?`, {
        path: f,
      });
  }
  const hostPart = host.includes(':') ? `[${host}]` : host;
  const kc = new ServiceAccountKubeConfig(tokenFile);
  kc.loadFromClusterAndUser(
    { name: 'in-cluster', server: `https://${hostPart}:${port}`, caFile, skipTLSVerify: false },
    { name: 'service-account', token: kc.readToken() },
  );
  return kc;
}

/**
 * The service account's token, read from its file before every request. kubelet rotates a projected
 * token by swapping the file; client-node's tokenFile provider caches it for 60 s, so for up to a
 * minute after the API server stopped accepting the old one every list and watch would fail. A
 * request is rare (watches are long-lived), a read of a small file is cheap.
 */
class ServiceAccountKubeConfig extends KubeConfig {
  readonly #tokenFile: string;

  constructor(tokenFile: string) {
    super();
    this.#tokenFile = tokenFile;
  }

  readToken(): string {
    return readFileSync(this.#tokenFile, 'utf8').trim();
  }

  #refresh(): void {
    const user = this.getCurrentUser() as { token?: string } | null;
    if (!user) return;
    try {
      user.token = this.readToken();
    } catch {
      // Mid-rotation or unreadable: keep the last token; the request says if it is refused.
    }
  }

  override async applyToHTTPSOptions(opts: Parameters<KubeConfig['applyToHTTPSOptions']>[0]): Promise<void> {
    this.#refresh();
    return super.applyToHTTPSOptions(opts);
  }

  override async applySecurityAuthentication(context: RequestContext): Promise<void> {
    this.#refresh();
    return super.applySecurityAuthentication(context);
  }
}
