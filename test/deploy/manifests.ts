// Loads deploy/ the way kubectl would read it: every YAML document of every file, parsed strictly
// (duplicate keys and YAML errors fail), plus small typed accessors the deploy tests share.
import { readFileSync, readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const DEPLOY_DIR = join(REPO_ROOT, 'deploy');

export type Json = Record<string, unknown>;

export interface Manifest {
  /** Path relative to deploy/. */
  readonly file: string;
  readonly kind: string;
  readonly name: string;
  readonly object: Json;
}

/** Every *.yaml under dir (recursively), relative to it, sorted. */
export function yamlFiles(dir = DEPLOY_DIR): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (/\.ya?ml$/.test(e.name)) out.push(relative(dir, p));
    }
  };
  walk(dir);
  return out.sort();
}

/** Parses every document of a file; throws with the file name on any YAML error or warning. */
export function parseFile(file: string, dir = DEPLOY_DIR): Json[] {
  const docs = parseAllDocuments(readFileSync(join(dir, file), 'utf8'), { uniqueKeys: true, strict: true });
  const list = Array.isArray(docs) ? docs : [docs];
  const out: Json[] = [];
  for (const doc of list) {
    const problems = [...doc.errors, ...doc.warnings];
    if (problems.length) throw new Error(`${file}: ${problems.map((p) => p.message).join('; ')}`);
    const value: unknown = doc.toJS();
    if (value === null || value === undefined) continue;
    if (typeof value !== 'object' || Array.isArray(value)) throw new Error(`${file}: a document is not a mapping`);
    out.push(value as Json);
  }
  return out;
}

/** Every Kubernetes object under deploy/ (the kustomization file excluded). */
export function loadManifests(dir = DEPLOY_DIR): Manifest[] {
  return yamlFiles(dir)
    .filter((f) => !f.endsWith('kustomization.yaml'))
    .flatMap((file) =>
      parseFile(file, dir).map((object) => {
        const meta = (object['metadata'] ?? {}) as Json;
        return {
          file,
          kind: String(object['kind']),
          name: String(meta['name'] ?? meta['generateName'] ?? ''),
          object,
        };
      }),
    );
}

export function only(manifests: readonly Manifest[], kind: string, file?: string): Json {
  const found = manifests.filter((m) => m.kind === kind && (file === undefined || m.file === file));
  if (found.length !== 1) throw new Error(`expected one ${kind}${file ? ` in ${file}` : ''}, found ${found.length}`);
  return found[0]!.object;
}

/** Walks a dotted path (numbers index arrays); undefined when any step is missing. */
export function at(value: unknown, path: string): unknown {
  let cur: unknown = value;
  for (const step of path.split('.')) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = Array.isArray(cur) ? cur[Number(step)] : (cur as Json)[step];
  }
  return cur;
}

export interface Container {
  name: string;
  image?: string;
  command?: string[];
  args?: string[];
  env?: Array<{ name: string; value?: string; valueFrom?: Json }>;
  envFrom?: Json[];
  ports?: Array<{ name?: string; containerPort: number }>;
  securityContext?: Json;
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean; mountPropagation?: string }>;
  resources?: Json;
  startupProbe?: Json;
  livenessProbe?: Json;
  readinessProbe?: Json;
}

/** The pod spec of a DaemonSet or Job. */
export function podSpec(workload: Json): Json {
  const spec = at(workload, 'spec.template.spec');
  if (!spec || typeof spec !== 'object') throw new Error('workload has no spec.template.spec');
  return spec as Json;
}

export function containersOf(workload: Json): { init: Container[]; main: Container[] } {
  const spec = podSpec(workload);
  return {
    init: (spec['initContainers'] ?? []) as Container[],
    main: (spec['containers'] ?? []) as Container[],
  };
}

/** The value of `--flag=value` in a container's args, if it is passed that way. */
export function argOf(c: Container, flag: string): string | undefined {
  return c.args?.find((a) => a.startsWith(`${flag}=`))?.slice(flag.length + 1);
}
