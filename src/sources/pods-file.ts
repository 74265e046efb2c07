// A pod source reading a Kubernetes `List` (JSON or YAML, one document or several) of Pods and
// Namespaces from a file, and re-reading it whenever it changes. It is the watch minus the API
// server: the same snapshots go through the same desired-state function and reconcile.
import { readFile, stat } from 'node:fs/promises';
import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';
import { createRequire } from 'node:module';
import { UsageError } from '../errors.ts';
import { logger, type Logger } from '../log.ts';
import type { ClusterSnapshot, PodSource, SourceHealth } from './types.ts';
import { SnapshotValidator } from './validate.ts';

const moduleLog = logger('pods-file');

/** yaml, loaded by the first YAML file only: a JSON file (the usual) spares the loader its 0.8 MiB of heap. */
const yaml = (): typeof import('yaml') => createRequire(import.meta.url)('yaml') as typeof import('yaml');

export class PodsFileError extends UsageError {
  override readonly name: string = 'PodsFileError';
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

export interface ParseOptions {
  readonly log?: Logger;
  /** Checks and reports the objects (a source keeps one for its lifetime). */
  readonly validator?: SnapshotValidator;
}

/**
 * Parses the file's text into a snapshot of its valid Pods and Namespaces; each invalid one is
 * logged (src/sources/validate.ts). Throws PodsFileError when the text is not a List at all.
 */
export function parsePodsList(text: string, path: string, options: ParseOptions = {}): ClusterSnapshot {
  const log = options.log ?? moduleLog;
  const validator = options.validator ?? new SnapshotValidator(log.child({ path }));
  const items: unknown[] = [];
  const trimmed = text.trimStart();
  if (trimmed.startsWith('{') || trimmed.startsWith('[')) {
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch (err) {
      throw new PodsFileError(`${path} is not valid JSON: ${(err as Error).message}`, { path });
    }
    collect(doc, items, path);
  } else {
    for (const doc of yaml().parseAllDocuments(text)) {
      if (doc.errors.length > 0) {
        throw new PodsFileError(`${path} is not valid YAML: ${doc.errors[0]!.message}`, { path });
      }
      collect(doc.toJS(), items, path);
    }
  }
  const pods: unknown[] = [];
  const namespaces: unknown[] = [];
  for (const [i, item] of items.entries()) {
    if (!isObject(item)) {
      validator.reportNotObject(`item #${i} of ${path}`, `items[${i}]`, item);
      continue;
    }
    if (item['kind'] === 'Pod') pods.push(item);
    else if (item['kind'] === 'Namespace') namespaces.push(item);
    else log.warn({ path, kind: item['kind'] }, 'pods file: item is neither a Pod nor a Namespace; ignored');
  }
  return validator.snapshot(pods, namespaces);
}

function collect(doc: unknown, into: unknown[], path: string): void {
  if (doc === null || doc === undefined) return; // an empty YAML document
  if (Array.isArray(doc)) {
    into.push(...doc);
  } else if (isObject(doc) && Array.isArray(doc['items'])) {
    into.push(...doc['items']);
  } else if (isObject(doc) && typeof doc['kind'] === 'string') {
    into.push(doc);
  } else {
    throw new PodsFileError(
      `${path} holds neither a Kubernetes List (kind: List, items: [...]) nor Pod/Namespace objects`,
      { path },
    );
  }
}

export interface PodsFileSourceOptions {
  readonly path: string;
  /** Also poll this often (ms): inotify misses changes on some filesystems and through some editors. */
  readonly pollMs?: number;
  /** Where its lines go (default: the process logger, component pods-file). */
  readonly log?: Logger;
}

function isCompleteJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

/** Every this many polls the file is read whatever stat() says (a change within one timestamp tick). */
const FULL_READ_EVERY = 30;

export function createPodsFileSource(options: PodsFileSourceOptions): PodSource {
  const { path } = options;
  const pollMs = options.pollMs ?? 1000;
  const log = options.log ?? moduleLog;
  const validator = new SnapshotValidator(log.child({ path }));
  let watcher: FSWatcher | undefined;
  let poller: NodeJS.Timeout | undefined;
  let lastText: string | undefined;
  let lastEventAt: number | undefined;
  let synced = false;
  let stopped = false;
  let running: Promise<void> = Promise.resolve();
  let deliver: (s: ClusterSnapshot) => void | Promise<void> = () => {};

  async function readOnce(initial: boolean, fast = false): Promise<void> {
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (initial) throw new PodsFileError(`cannot read pods file ${path}: ${e.message}`, { path, code: e.code });
      // A file being replaced can vanish for a moment; keep the last good state, say so once.
      if (lastText !== undefined)
        log.error({ path, code: e.code }, 'pods file unreadable; keeping the last good state');
      lastText = undefined;
      return;
    }
    // The immediate read after a rename event trusts only a document that is complete by its own
    // syntax (JSON that parses): a file created and then written in place also raises 'rename', and a
    // YAML file cut short can parse with pods missing. Anything else waits for the debounce.
    if (fast && !isCompleteJson(text)) {
      schedule(30);
      return;
    }
    // Comparing the text itself: mtime granularity can hide an edit, and a poll after an inotify
    // event must not reconcile the same content twice.
    if (text === lastText) return;
    if (text.trim() === '' && !initial) {
      // A writer that truncates then writes shows us an empty file for a moment. "No pods" is said
      // with an empty List, not an empty file, so wait for the content instead of deleting every entry.
      return;
    }
    lastText = text;
    let snapshot: ClusterSnapshot;
    try {
      snapshot = parsePodsList(text, path, { log, validator });
    } catch (err) {
      if (initial) throw err;
      log.error({ path, err: (err as Error).message }, 'pods file is invalid; keeping the last good state');
      return;
    }
    lastEventAt = Date.now();
    await deliver(snapshot);
    synced = true;
  }

  let lastStat: string | undefined;
  /** The file's identity, size and times differ from the last poll's (inotify may have missed it). */
  async function statChanged(): Promise<boolean> {
    try {
      const st = await stat(path, { bigint: true });
      const now = `${st.ino}/${st.size}/${st.mtimeNs}/${st.ctimeNs}`;
      const changed = now !== lastStat;
      lastStat = now;
      return changed;
    } catch {
      return true; // readOnce says why
    }
  }

  let debounce: NodeJS.Timeout | undefined;
  function schedule(delayMs = 30): void {
    if (stopped || debounce) return;
    // Events come in bursts while a file is written: read once, shortly after the burst.
    debounce = setTimeout(() => {
      debounce = undefined;
      running = running
        .then(() => readOnce(false, delayMs === 0))
        .catch((err: unknown) => {
          log.error({ err: (err as Error).message }, 'pods file reconcile failed');
        });
    }, delayMs);
  }

  return {
    async start(onSnapshot) {
      deliver = onSnapshot;
      await readOnce(true);
      // Watch the directory, not the file: editors and `mv` replace the inode.
      try {
        watcher = watch(dirname(path), (event, name) => {
          // A rename onto our name is usually an atomic replace (write a temp file, mv): read at once
          // (readOnce applies it only if it is complete JSON). In-place writes ('change') come in
          // bursts: debounce those.
          if (name === basename(path)) schedule(event === 'rename' ? 0 : 30);
          else if (name === null) schedule();
        });
        watcher.on('error', (err) => log.warn({ err: err.message }, 'pods file watcher failed; polling only'));
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'cannot watch pods file directory; polling only');
      }
      // The poll reads the file only when stat() says it changed, or every FULL_READ_EVERY polls: at
      // 250 pods reading and comparing the whole file every second was a tenth of the idle loader's CPU.
      let polls = 0;
      poller = setInterval(() => {
        if (++polls % FULL_READ_EVERY === 0) schedule();
        else void statChanged().then((changed) => changed && schedule());
      }, pollMs);
      poller.unref();
    },
    async stop() {
      stopped = true;
      watcher?.close();
      if (poller) clearInterval(poller);
      if (debounce) clearTimeout(debounce);
      await running;
    },
    health(): SourceHealth {
      return { synced, lastEventAgeMs: lastEventAt === undefined ? undefined : Date.now() - lastEventAt, restarts: 0 };
    },
  };
}
