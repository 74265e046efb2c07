import t from 'tap';
import { mkdtemp, rm, writeFile, rename, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPodsFileSource, parsePodsList, PodsFileError } from '../../src/sources/pods-file.ts';
import type { ClusterSnapshot } from '../../src/sources/types.ts';
import { captureLog } from '../helpers/log.ts';
import { eventually } from '../helpers/wait.ts';
import { INVALID_NAMESPACE, INVALID_PODS, validNamespace, validPod } from './invalid-objects.ts';

const list = (names: string[]): string =>
  JSON.stringify({
    apiVersion: 'v1',
    kind: 'List',
    items: [
      validNamespace('app'),
      ...names.map((n) => validPod(n, 'app')),
      { apiVersion: 'v1', kind: 'Service', metadata: { name: 'svc' } },
    ],
  });

t.test('parses JSON Lists, YAML multi-document files and bare arrays', async (t) => {
  const { log } = captureLog();
  const fromJson = parsePodsList(list(['a', 'b']), 'x.json', { log });
  t.same(
    fromJson.pods.map((p) => p.metadata?.name),
    ['a', 'b'],
  );
  t.equal(fromJson.namespaces.length, 1);
  const yaml =
    'apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n---\nkind: List\nitems:\n' +
    '- kind: Pod\n  metadata: {name: p, namespace: app, uid: u-p, labels:}\n  spec: {nodeName: n1}\n';
  const fromYaml = parsePodsList(yaml, 'x.yaml', { log });
  t.same(
    fromYaml.pods.map((p) => p.metadata?.name),
    ['p'],
    'an empty YAML labels: (null) is no labels',
  );
  t.equal(fromYaml.namespaces.length, 1);
  const bare = parsePodsList(JSON.stringify([validPod('c'), validNamespace('shop')]), 'x.json', { log });
  t.same([bare.pods.length, bare.namespaces.length], [1, 1]);
});

t.test('text that is not a List is a clear error', async (t) => {
  t.throws(() => parsePodsList('{"kind": "List", "items": [', 'f.json'), PodsFileError);
  t.throws(() => parsePodsList('{"kind": "List", "items": [', 'f.json'), /f\.json is not valid JSON/);
  t.throws(() => parsePodsList('just words', 'f.yaml'), /neither a Kubernetes List/);
  t.throws(() => parsePodsList('a: [1,\n', 'f.yaml'), /not valid YAML/);
});

t.test('each invalid object is one log line with its name, field and reason; the valid ones go on', async (t) => {
  const cap = captureLog();
  const bad = [...INVALID_PODS.map((c) => c.object), INVALID_NAMESPACE.object];
  const items = [validNamespace('shop'), validPod('good'), ...bad, 'a string', 42, null];
  const s = parsePodsList(JSON.stringify({ kind: 'List', items }), 'pods.json', { log: cap.log });
  t.same(
    s.pods.map((p) => p.metadata?.name),
    ['good'],
    'only the valid pod',
  );
  t.same(
    s.namespaces.map((n) => n.metadata?.name),
    ['shop'],
    'only the valid namespace',
  );
  const lines = cap.with('invalid object skipped');
  t.equal(lines.length, bad.length + 3, 'one line per invalid object, list items that are not objects included');
  for (const c of [...INVALID_PODS, INVALID_NAMESPACE]) {
    const line = lines.find((l) => l['object'] === c.label);
    t.equal(line?.['field'], c.field, `${c.label}: ${String(line?.['msg'])}`);
    t.match(String(line?.['reason']), c.reason);
    t.equal(line?.['path'], 'pods.json', 'the line names the file');
  }
  const first = 2 + INVALID_PODS.length + 1;
  t.match(
    lines.find((l) => l['field'] === `items[${first}]`),
    { object: `item #${first} of pods.json`, reason: 'expected object, got string' },
  );
  t.match(
    lines.find((l) => l['field'] === `items[${first + 2}]`),
    { reason: 'expected object, got null' },
  );
});

t.test('the source delivers the file, follows edits and atomic replaces, and keeps the last good state', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ambpf-podsfile-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'pods.json');
  await writeFile(path, list(['a']));
  const seen: ClusterSnapshot[] = [];
  const cap = captureLog();
  const source = createPodsFileSource({ path, pollMs: 100, log: cap.log });
  t.teardown(() => source.stop());
  await source.start((s) => {
    seen.push(s);
  });
  t.equal(seen.length, 1);
  t.equal(source.health().synced, true);

  await writeFile(path, list(['a', 'b']));
  await eventually(() => seen.length === 2, 10_000, 'the edit to be delivered');
  t.same(
    seen.at(-1)!.pods.map((x) => x.metadata?.name),
    ['a', 'b'],
  );

  // A broken edit keeps the last good state: the source reads it, says so, delivers nothing.
  await writeFile(path, '{"kind": "List", "items": [');
  const said = (msg: string) => (): boolean => cap.with(msg).length > 0;
  await eventually(said('pods file is invalid; keeping the last good state'), 10_000, 'the broken edit to be read');
  t.equal(seen.length, 2, 'no snapshot for a broken file');

  // An unreadable (here: vanished) file keeps it too.
  await writeFile(path, list(['a', 'b', 'c']));
  await eventually(() => seen.length === 3, 10_000, 'the fixed file to be delivered');
  await unlink(path);
  await eventually(said('pods file unreadable; keeping the last good state'), 10_000, 'the missing file to be noticed');
  t.equal(seen.length, 3, 'no snapshot for a missing file');

  // An edit that makes one pod invalid drops that pod only, and says why.
  const oneBad = JSON.parse(list(['a', 'b'])) as { items: Array<{ spec?: Record<string, unknown> }> };
  oneBad.items[2]!.spec!['hostNetwork'] = 'true';
  await writeFile(join(dir, 'tmp.json'), JSON.stringify(oneBad));
  await rename(join(dir, 'tmp.json'), path);
  await eventually(() => seen.length === 4, 10_000, 'the atomic replace to be delivered');
  t.same(
    seen.at(-1)!.pods.map((x) => x.metadata?.name),
    ['a'],
    'the valid pod only',
  );
  t.match(cap.with('invalid object skipped'), [
    { object: 'pod app/b', field: 'spec.hostNetwork', reason: 'expected boolean, got string "true"' },
  ]);
});

t.test('a missing file at start is a clear error', async (t) => {
  const source = createPodsFileSource({ path: '/nonexistent/ambpf/pods.json' });
  await t.rejects(
    source.start(() => {}),
    /cannot read pods file \/nonexistent\/ambpf\/pods\.json/,
  );
});
