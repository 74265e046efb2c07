// Where the API server is and how to authenticate: a kubeconfig file (--kubeconfig) or the pod's
// service account (--in-cluster: token + CA mounted under /var/run/secrets/kubernetes.io/serviceaccount,
// address from KUBERNETES_SERVICE_HOST/PORT). The directory is a parameter so tests can point it at
// files they made.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
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
    throw new KubeConfigError(`kubeconfig ${path} has no usable cluster for its current context "${kc.getCurrentContext()}"`, { path });
  }
  return kc;
}

function inCluster(dir: string, env: NodeJS.ProcessEnv): KubeConfig {
  const host = env['KUBERNETES_SERVICE_HOST'];
  const port = env['KUBERNETES_SERVICE_PORT'];
  if (!host || !port) {
    throw new KubeConfigError('--in-cluster needs KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT, which Kubernetes sets in every pod; they are not set here');
  }
  const tokenFile = join(dir, 'token');
  const caFile = join(dir, 'ca.crt');
  for (const f of [tokenFile, caFile]) {
    if (!existsSync(f)) throw new KubeConfigError(`--in-cluster: ${f} is missing; is a service account token mounted into this pod?`, { path: f });
  }
  const hostPart = host.includes(':') ? `[${host}]` : host;
  const kc = new KubeConfig();
  // The tokenFile auth provider re-reads the file, so a rotated (projected) token is picked up.
  kc.loadFromClusterAndUser(
    { name: 'in-cluster', server: `https://${hostPart}:${port}`, caFile, skipTLSVerify: false },
    { name: 'service-account', authProvider: { name: 'tokenFile', config: { tokenFile } } },
  );
  return kc;
}
