// The three requests ambpf makes to the Kubernetes API, on node:http(s) with the config's keep-alive
// pool: a GET answered with one JSON document (a list page), a PATCH (the redirection annotation), and
// a watch (JSON lines over a chunked response that lasts minutes). node:https rather than the global
// fetch: undici's pool, stream classes and parsers cost the long-lived loader memory it does not need.
import type { ClientRequest, IncomingMessage } from 'node:http';
import type { KubeConfig } from './config.ts';
import { KubeApiError, KubeAuthError } from './errors.ts';

// Not an ES import of node:http(s): its namespace's lazy WebSocket getters load undici after all (see config.ts).
const { request: httpRequest } = process.getBuiltinModule('node:http');
const { request: httpsRequest } = process.getBuiltinModule('node:https');

export interface JsonRequest {
  readonly method: 'GET' | 'PATCH';
  /** Path and query, e.g. /api/v1/pods?limit=500. */
  readonly path: string;
  readonly body?: unknown;
  readonly contentType?: string;
  /** No answer within this long: the request fails (code 0) and its connection is dropped. */
  readonly timeoutMs: number;
}

/** Sends a request and resolves with the parsed 2xx answer; anything else rejects with a KubeApiError. */
export function requestJson(kc: KubeConfig, r: JsonRequest): Promise<unknown> {
  const url = new URL(kc.server + r.path);
  const body = r.body === undefined ? undefined : JSON.stringify(r.body);
  return new Promise((resolve, reject) => {
    let done = false;
    const fail = (err: Error): void => {
      if (done) return;
      done = true;
      reject(err);
    };
    const req = send(
      kc,
      url,
      r.method,
      body === undefined ? {} : { 'Content-Type': r.contentType ?? 'application/json' },
    );
    const timer = setTimeout(() => {
      fail(unreachable(r.method, url, new Error(`no answer within ${r.timeoutMs} ms (timeout)`)));
      req.destroy();
    }, r.timeoutMs);
    timer.unref();
    req.on('error', (err) => {
      clearTimeout(timer);
      fail(unreachable(r.method, url, err));
    });
    req.on('response', (res) => {
      readAll(res).then(
        (text) => {
          clearTimeout(timer);
          const code = res.statusCode ?? 0;
          const parsed = parseJson(text);
          if (code >= 200 && code < 300 && parsed !== undefined) {
            done = true;
            resolve(parsed);
          } else fail(statusError(r.method, code, parsed, text, url));
        },
        (err: Error) => {
          clearTimeout(timer);
          fail(unreachable(r.method, url, err));
        },
      );
    });
    req.end(body);
  });
}

export interface WatchHandlers {
  /** One line of the stream (a JSON document, unparsed). */
  readonly onLine: (line: string) => void;
  /** The stream ended: cleanly (undefined: the server's timeout, or it closed) or with an error. Called once. */
  readonly onEnd: (err: Error | undefined) => void;
}

export interface WatchHandle {
  /** Drops the stream; onEnd is not called after this. */
  abort(): void;
}

/**
 * Opens a watch on `path` (with its query). `idleTimeoutMs`: a connection silent for this long is
 * dropped (an error), so a half-open TCP connection does not hold a watch forever.
 */
export function openWatch(kc: KubeConfig, path: string, idleTimeoutMs: number, h: WatchHandlers): WatchHandle {
  const url = new URL(kc.server + path);
  let ended = false;
  const end = (err: Error | undefined): void => {
    if (ended) return;
    ended = true;
    h.onEnd(err);
  };
  const req = send(kc, url, 'GET', {});
  req.setTimeout(idleTimeoutMs, () => {
    const err = new Error(`watch silent for ${idleTimeoutMs} ms (timeout)`);
    end(unreachable('WATCH', url, err));
    req.destroy(err);
  });
  req.on('error', (err) => end(unreachable('WATCH', url, err)));
  req.on('response', (res) => {
    const code = res.statusCode ?? 0;
    if (code !== 200) {
      readAll(res).then(
        (text) => end(statusError('WATCH', code, parseJson(text), text, url)),
        (err: Error) => end(unreachable('WATCH', url, err)),
      );
      return;
    }
    res.setEncoding('utf8');
    let buf = '';
    res.on('data', (chunk: string) => {
      buf += chunk;
      let nl: number;
      while (!ended && (nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line !== '') h.onLine(line);
      }
    });
    res.on('end', () => {
      const rest = buf.trim();
      if (rest !== '' && !ended) h.onLine(rest);
      end(undefined);
    });
    res.on('error', (err) => end(unreachable('WATCH', url, err)));
    // A connection reset mid-stream ends the response with 'aborted' and no 'end' or 'error'.
    res.on('aborted', () => end(unreachable('WATCH', url, new Error('the server closed the watch mid-stream'))));
  });
  req.end();
  return {
    abort() {
      ended = true;
      req.destroy();
    },
  };
}

function send(kc: KubeConfig, url: URL, method: string, headers: Record<string, string>): ClientRequest {
  const auth = kc.authorization();
  const options = {
    method: method === 'WATCH' ? 'GET' : method,
    agent: kc.agent(),
    headers: { Accept: 'application/json', ...headers, ...(auth ? { Authorization: auth } : {}) },
  };
  return (url.protocol === 'http:' ? httpRequest : httpsRequest)(url, options);
}

function readAll(res: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    res.on('data', (c: Buffer) => chunks.push(c));
    res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    res.on('error', reject);
    res.on('aborted', () => reject(new Error('the server closed the connection mid-answer')));
  });
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function unreachable(method: string, url: URL, err: Error): KubeApiError {
  return new KubeApiError(
    `${method} ${url.pathname} on the Kubernetes API server at ${url.origin} failed: ${err.message}`,
    0,
    undefined,
    url.href,
    { cause: err },
  );
}

/** The error for a non-2xx answer, with the Status object's reason and message when the server sent one. */
export function statusError(method: string, code: number, body: unknown, text: string, url: URL): KubeApiError {
  const st = (body ?? {}) as { message?: unknown; reason?: unknown };
  const reason = typeof st.reason === 'string' ? st.reason : undefined;
  const statusMessage = typeof st.message === 'string' ? st.message : undefined;
  const message = statusMessage ?? text.slice(0, 200);
  if (code === 401 || code === 403) {
    return new KubeAuthError(
      `the Kubernetes API server at ${url.origin} rejected ambpf's credentials (${code} ${reason ?? ''}: ${message}) ` +
        `for ${method} ${url.pathname}; ` +
        (code === 401
          ? 'check the token or client certificate in the kubeconfig or service account'
          : "check what ambpf's ClusterRole grants (deploy/clusterrole.yaml)"),
      code,
      reason,
      url.href,
      { statusMessage },
    );
  }
  return new KubeApiError(
    `${method} ${url.pathname} on ${url.origin} failed with ${code}${reason ? ` ${reason}` : ''}: ${message}`,
    code,
    reason,
    url.href,
    { statusMessage },
  );
}
