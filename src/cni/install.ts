// Puts ambpf-cni into the node's CNI chain the way istio-cni does: the plugin binary copied into the
// CNI bin dir, and one entry appended as the last plugin of the primary CNI's conflist (ambpf creates
// no conflist of its own, so the runtime keeps using the primary CNI's). The entry is inserted as
// text, right after the last plugin, so removing it gives back the primary CNI's file byte for byte.
// Idempotent both ways; `ensure` is what a watch calls when the primary CNI rewrites its file.
import {
  chmodSync,
  copyFileSync,
  existsSync,
  readdirSync,
  readFileSync,
  renameSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { AmbpfError } from '../errors.ts';

export const PLUGIN_TYPE = 'ambpf-cni';
export const DEFAULT_BIN_DIR = '/opt/cni/bin';
export const DEFAULT_CONF_DIR = '/etc/cni/net.d';

export class CniInstallError extends AmbpfError {
  override readonly name = 'CniInstallError';
}

export interface CniInstallOptions {
  readonly confDir: string;
  readonly binDir: string;
  /** The plugin binary to copy into binDir; none: leave binDir alone. */
  readonly binary?: string;
  /** The entry's config: `{"type": "ambpf-cni", ...entry}`. */
  readonly entry: Readonly<Record<string, unknown>>;
}

interface Span {
  readonly start: number;
  readonly end: number;
}

/** End (exclusive) of the JSON value starting at or after i, in text already known to be valid JSON. */
function valueEnd(text: string, i: number): number {
  i = skipWs(text, i);
  const c = text[i];
  if (c === '"') {
    for (i++; i < text.length; i++) {
      if (text[i] === '\\') i++;
      else if (text[i] === '"') return i + 1;
    }
    return i;
  }
  if (c === '{' || c === '[') {
    const close = c === '{' ? '}' : ']';
    i = skipWs(text, i + 1);
    if (text[i] === close) return i + 1;
    for (;;) {
      if (close === '}') i = skipWs(text, valueEnd(text, i)) + 1; // key and ':'
      i = skipWs(text, valueEnd(text, i));
      if (text[i] === ',') {
        i++;
        continue;
      }
      return i + 1;
    }
  }
  while (i < text.length && /[-+.\w]/.test(text[i]!)) i++;
  return i;
}

function skipWs(text: string, i: number): number {
  while (i < text.length && /\s/.test(text[i]!)) i++;
  return i;
}

/** The value span of a top-level key of the object in text. */
function memberSpan(text: string, key: string): Span | undefined {
  let i = skipWs(text, 0) + 1;
  for (;;) {
    i = skipWs(text, i);
    if (text[i] !== '"') return undefined;
    const keyEnd = valueEnd(text, i);
    const name = JSON.parse(text.slice(i, keyEnd)) as string;
    const start = skipWs(text, skipWs(text, keyEnd) + 1);
    const end = valueEnd(text, start);
    if (name === key) return { start, end };
    i = skipWs(text, end);
    if (text[i] === ',') i++;
  }
}

/** The element spans of the array whose '[' is at i. */
function elementSpans(text: string, i: number): Span[] {
  const out: Span[] = [];
  i = skipWs(text, i + 1);
  if (text[i] === ']') return out;
  for (;;) {
    const start = skipWs(text, i);
    const end = valueEnd(text, start);
    out.push({ start, end });
    i = skipWs(text, end);
    if (text[i] !== ',') return out;
    i++;
  }
}

interface ConfList {
  readonly plugins: Span;
  readonly elements: readonly Span[];
  readonly ours: readonly number[];
}

function parseConfList(text: string, file: string): ConfList {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new CniInstallError(`${file} is not JSON`, { file }, { cause: err });
  }
  const plugins = doc !== null && typeof doc === 'object' ? (doc as Record<string, unknown>)['plugins'] : undefined;
  if (!Array.isArray(plugins)) {
    throw new CniInstallError(
      `${file} has no "plugins" list: a single-plugin .conf is not supported (ambpf creates no conflist)`,
      { file },
    );
  }
  const span = memberSpan(text, 'plugins')!;
  const elements = elementSpans(text, span.start);
  const ours = plugins.flatMap((p: unknown, i) =>
    p !== null && typeof p === 'object' && (p as Record<string, unknown>)['type'] === PLUGIN_TYPE ? [i] : [],
  );
  return { plugins: span, elements, ours };
}

/** The conflist text with ambpf's entry as the last plugin (unchanged if it already is, with this config). */
export function insertEntry(text: string, entry: Readonly<Record<string, unknown>>, file = 'conflist'): string {
  const own = JSON.stringify({ type: PLUGIN_TYPE, ...entry });
  let list = parseConfList(text, file);
  const last = list.elements.at(-1);
  const ownIsLast = list.ours.length === 1 && list.ours[0] === list.elements.length - 1;
  if (ownIsLast && text.slice(last!.start, last!.end) === own) return text;
  if (list.ours.length > 0) {
    text = removeEntry(text, file);
    list = parseConfList(text, file);
  }
  const after = list.elements.at(-1);
  // Compact, right after the last plugin: removeEntry takes exactly these bytes out again.
  return after
    ? `${text.slice(0, after.end)},${own}${text.slice(after.end)}`
    : `${text.slice(0, list.plugins.start + 1)}${own}${text.slice(list.plugins.start + 1)}`;
}

/** The conflist text without ambpf's entries (each with the separator before it). */
export function removeEntry(text: string, file = 'conflist'): string {
  const list = parseConfList(text, file);
  for (const i of [...list.ours].reverse()) {
    const el = list.elements[i]!;
    const prev = list.elements[i - 1];
    const next = list.elements[i + 1];
    // The element and the comma before it (or, as the first one, the comma after it).
    const [from, to] = prev ? [prev.end, el.end] : next ? [el.start, next.start] : [el.start, el.end];
    text = text.slice(0, from) + text.slice(to);
  }
  return text;
}

/** The primary CNI's config as the runtime picks it: the first .conflist/.conf/.json by name. */
export function primaryConfig(confDir: string): string | undefined {
  if (!existsSync(confDir)) return undefined;
  const names = readdirSync(confDir)
    .filter((n) => /\.(conflist|conf|json)$/.test(n))
    .sort();
  return names[0] === undefined ? undefined : join(confDir, names[0]);
}

/** Replaces a file atomically, keeping its mode (a temp name the runtime does not read as a config). */
function replaceFile(path: string, text: string): void {
  const tmp = `${path}.ambpf-tmp-${process.pid}`;
  writeFileSync(tmp, text, { mode: statSync(path).mode & 0o777 });
  renameSync(tmp, path);
}

export interface InstallResult {
  readonly file: string | undefined;
  readonly changed: boolean;
}

/** Binary in place, entry last in the primary conflist. Idempotent. No primary config yet: nothing to do. */
export function ensureInstalled(o: CniInstallOptions): InstallResult {
  if (o.binary) {
    const dst = join(o.binDir, PLUGIN_TYPE);
    const same = existsSync(dst) && readFileSync(dst).equals(readFileSync(o.binary));
    if (!same) {
      const tmp = `${dst}.ambpf-tmp-${process.pid}`;
      copyFileSync(o.binary, tmp);
      chmodSync(tmp, 0o755);
      renameSync(tmp, dst);
    }
  }
  const file = primaryConfig(o.confDir);
  if (!file) return { file, changed: false };
  const text = readFileSync(file, 'utf8');
  const next = insertEntry(text, o.entry, file);
  if (next === text) return { file, changed: false };
  replaceFile(file, next);
  return { file, changed: true };
}

/** Exactly ambpf's entry out of the primary conflist, and its binary out of binDir. Idempotent. */
export function uninstall(o: Pick<CniInstallOptions, 'confDir' | 'binDir'>): InstallResult {
  const bin = join(o.binDir, PLUGIN_TYPE);
  if (existsSync(bin)) unlinkSync(bin);
  const file = primaryConfig(o.confDir);
  if (!file) return { file, changed: false };
  const text = readFileSync(file, 'utf8');
  let next: string;
  try {
    next = removeEntry(text, file);
  } catch (err) {
    // Not a conflist (or not JSON): ambpf never wrote into it.
    if (err instanceof CniInstallError) return { file, changed: false };
    throw err;
  }
  if (next === text) return { file, changed: false };
  replaceFile(file, next);
  return { file, changed: true };
}
