import t from 'tap';
import { mkdtemp, rm, writeFile, rename } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPodsFileSource, parsePodsList, PodsFileError } from '../../src/sources/pods-file.ts';
import type { ClusterSnapshot } from '../../src/sources/types.ts';

const list = (names: string[]): string => JSON.stringify({
  apiVersion: 'v1', kind: 'List',
  items: [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'app' } },
    ...names.map((n) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name: n, namespace: 'app', uid: n } })),
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'svc' } },
  ],
});

t.test('parses JSON Lists, YAML multi-document files and bare arrays', async (t) => {
  const fromJson = parsePodsList(list(['a', 'b']), 'x.json');
  t.same(fromJson.pods.map((p) => p.metadata?.name), ['a', 'b']);
  t.equal(fromJson.namespaces.length, 1);
  const yaml = 'apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n---\nkind: List\nitems:\n- kind: Pod\n  metadata: {name: p, namespace: app}\n';
  const fromYaml = parsePodsList(yaml, 'x.yaml');
  t.same(fromYaml.pods.map((p) => p.metadata?.name), ['p']);
  t.equal(fromYaml.namespaces.length, 1);
});

t.test('text that is not a List is a clear error', async (t) => {
  t.throws(() => parsePodsList('{"kind": "List", "items": [', 'f.json'), PodsFileError);
  t.throws(() => parsePodsList('{"kind": "List", "items": [', 'f.json'), /f\.json is not valid JSON/);
  t.throws(() => parsePodsList('just words', 'f.yaml'), /neither a Kubernetes List/);
  t.throws(() => parsePodsList('a: [1,\n', 'f.yaml'), /not valid YAML/);
});

t.test('the source delivers the file, follows edits and atomic replaces, and survives a broken edit', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ambpf-podsfile-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'pods.json');
  await writeFile(path, list(['a']));
  const seen: ClusterSnapshot[] = [];
  let notify: () => void = () => {};
  const source = createPodsFileSource({ path, pollMs: 100 });
  t.teardown(() => source.stop());
  await source.start((s) => { seen.push(s); notify(); });
  const next = (): Promise<void> => new Promise((resolve) => { notify = resolve; });
  t.equal(seen.length, 1);
  t.equal(source.health().synced, true);

  let p = next();
  await writeFile(path, list(['a', 'b']));
  await p;
  t.same(seen.at(-1)!.pods.map((x) => x.metadata?.name), ['a', 'b']);

  // A broken edit keeps the last good state (no snapshot), the next good one is delivered.
  await writeFile(path, '{"kind": "List", "items": [');
  await new Promise((r) => setTimeout(r, 400));
  t.equal(seen.length, 2);

  p = next();
  await writeFile(join(dir, 'tmp.json'), list(['c']));
  await rename(join(dir, 'tmp.json'), path);
  await p;
  t.same(seen.at(-1)!.pods.map((x) => x.metadata?.name), ['c']);
});

t.test('a missing file at start is a clear error', async (t) => {
  const source = createPodsFileSource({ path: '/nonexistent/ambpf/pods.json' });
  await t.rejects(source.start(() => {}), /cannot read pods file \/nonexistent\/ambpf\/pods\.json/);
});
