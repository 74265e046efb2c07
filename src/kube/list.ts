// A list request returning the objects exactly as the server sent them (the pod source promises raw
// objects, src/sources/types.ts), page by page with limit/continue.
import type { KubeConfig } from './config.ts';
import { KubeApiError } from './errors.ts';
import { requestJson } from './http.ts';

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
    const page = (await requestJson(kc, {
      method: 'GET',
      path: `${path}?${params.toString()}`,
      timeoutMs: query.timeoutMs,
    })) as Page;
    if (!Array.isArray(page.items))
      throw new KubeApiError(`list of ${path} returned no items array`, 200, undefined, path);
    items.push(...page.items);
    resourceVersion =
      typeof page.metadata?.resourceVersion === 'string' ? page.metadata.resourceVersion : resourceVersion;
    cont = typeof page.metadata?.continue === 'string' ? page.metadata.continue : '';
  } while (cont !== '');
  return { metadata: resourceVersion === undefined ? {} : { resourceVersion }, items };
}
