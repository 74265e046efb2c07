// A list request returning the objects exactly as the server sent them. The generated CoreV1Api
// would deserialize them into classes (Dates, known fields only), while watch events arrive as raw
// JSON; the pod source promises raw objects (src/sources/types.ts), so lists go through the
// kubeconfig's own HTTPS options (CA, client certs, token providers) and plain JSON parsing.
import { request as httpsRequest } from 'node:https';
import { request as httpRequest, type RequestOptions } from 'node:http';
import type { KubeConfig } from '@kubernetes/client-node';
import { KubeApiError, KubeAuthError } from './errors.ts';

export interface RawList {
  readonly metadata: { readonly resourceVersion?: string };
  readonly items: unknown[];
}

export interface ListQuery {
  readonly fieldSelector?: string | undefined;
  readonly labelSelector?: string | undefined;
  /** Page size (limit/continue); large nodes list in chunks instead of one huge response. */
  readonly pageSize: number;
  readonly timeoutMs: number;
}

interface Page {
  readonly metadata?: { resourceVersion?: unknown; continue?: unknown };
  readonly items?: unknown;
}

/** Lists `path` (e.g. /api/v1/pods) page by page; the result's resourceVersion is the list's. */
export async function listRaw(kc: KubeConfig, path: string, query: ListQuery): Promise<RawList> {
  const items: unknown[] = [];
  let cont = '';
  let resourceVersion: string | undefined;
  do {
    const params = new URLSearchParams();
    if (query.fieldSelector) params.set('fieldSelector', query.fieldSelector);
    if (query.labelSelector) params.set('labelSelector', query.labelSelector);
    params.set('limit', String(query.pageSize));
    if (cont) params.set('continue', cont);
    const page = (await getJson(kc, `${path}?${params.toString()}`, query.timeoutMs)) as Page;
    if (!Array.isArray(page.items))
      throw new KubeApiError(`list of ${path} returned no items array`, 200, undefined, path);
    items.push(...page.items);
    resourceVersion =
      typeof page.metadata?.resourceVersion === 'string' ? page.metadata.resourceVersion : resourceVersion;
    cont = typeof page.metadata?.continue === 'string' ? page.metadata.continue : '';
  } while (cont !== '');
  return { metadata: resourceVersion === undefined ? {} : { resourceVersion }, items };
}

async function getJson(kc: KubeConfig, pathAndQuery: string, timeoutMs: number): Promise<unknown> {
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new KubeApiError('the kubeconfig has no current cluster', 0, undefined, pathAndQuery);
  const url = new URL(cluster.server.replace(/\/$/, '') + pathAndQuery);
  const opts: RequestOptions & { headers: Record<string, string> } = {
    method: 'GET',
    headers: { Accept: 'application/json' },
  };
  await kc.applyToHTTPSOptions(opts);
  const send = url.protocol === 'http:' ? httpRequest : httpsRequest;
  return new Promise((resolve, reject) => {
    const req = send(url, { ...opts, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', (err) =>
        reject(
          new KubeApiError(`reading the list from ${url.origin} failed: ${err.message}`, 0, undefined, url.href, {
            cause: err,
          }),
        ),
      );
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        const code = res.statusCode ?? 0;
        let body: unknown;
        try {
          body = JSON.parse(text);
        } catch {
          body = undefined;
        }
        if (code === 200 && body !== undefined) return resolve(body);
        reject(statusError(code, body, text, url));
      });
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', (err) =>
      reject(
        new KubeApiError(
          `cannot reach the Kubernetes API server at ${url.origin}: ${err.message}`,
          0,
          undefined,
          url.href,
          { cause: err },
        ),
      ),
    );
    req.end();
  });
}

function statusError(code: number, body: unknown, text: string, url: URL): KubeApiError {
  const st = (body ?? {}) as { message?: unknown; reason?: unknown };
  const reason = typeof st.reason === 'string' ? st.reason : undefined;
  const message = typeof st.message === 'string' ? st.message : text.slice(0, 200);
  if (code === 401 || code === 403) {
    return new KubeAuthError(
      `the Kubernetes API server at ${url.origin} rejected ambpf's credentials (${code} ${reason ?? ''}: ${message}); ` +
        (code === 401
          ? 'check the token or client certificate in the kubeconfig or service account'
          : "grant list/watch on pods and namespaces to ambpf's service account"),
      code,
      reason,
      url.href,
    );
  }
  return new KubeApiError(
    `listing ${url.pathname} on ${url.origin} failed with ${code}${reason ? ` ${reason}` : ''}: ${message}`,
    code,
    reason,
    url.href,
  );
}
