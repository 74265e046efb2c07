// docs/install.md against what it describes: the names, paths, labels and flags its commands use are
// the ones deploy/ and the CLI really have, so a change to either that the page does not follow fails
// here. (Istio's side, chart names and values, is not checkable offline: the page cites its source.)
import t from 'tap';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT, argOf, at, containersOf, loadManifests, only, podSpec } from './manifests.ts';

const run = promisify(execFile);
const AMBPF = join(REPO_ROOT, 'bin/ambpf');

const doc = readFileSync(join(REPO_ROOT, 'docs/install.md'), 'utf8');
const manifests = loadManifests();
const ds = only(manifests, 'DaemonSet');
const job = only(manifests, 'Job');
const loader = containersOf(ds).main.find((c) => c.name === 'loader')!;

/** The shell lines of the page's ```sh blocks, continuation lines joined. */
const shellLines = [...doc.matchAll(/```sh\n([\s\S]*?)```/g)]
  .flatMap((m) => m[1]!.replace(/\\\n\s*/g, ' ').split('\n'))
  .map((l) => l.replace(/\s+#.*$/, '').trim())
  .filter((l) => l && !l.startsWith('#'));

t.test('the page names the DaemonSet, namespace, container and Job label deploy/ has', async (t) => {
  const ns = String(at(ds, 'metadata.namespace'));
  t.ok(
    shellLines.some((l) =>
      l.includes(`-n ${ns} exec ds/${String(at(ds, 'metadata.name'))} -c ${loader.name} -- ambpf`),
    ),
    'kubectl exec into the loader',
  );
  t.equal(
    containersOf(ds).main.indexOf(loader),
    0,
    "the loader is containers/0, which the page's JSON patches append args to",
  );
  t.match(doc, '/spec/template/spec/containers/0/args/-');
  // A dotted label key: read the labels map, not a path.
  const component = (at(job, 'metadata.labels') as Record<string, string>)['app.kubernetes.io/component'];
  t.ok(component, 'the Job has a component label');
  t.ok(
    shellLines.some((l) => l.includes(`-l app.kubernetes.io/component=${component ?? '?'}`)),
    `the uninstall Jobs are selected by component=${component ?? '?'}`,
  );
  t.match(doc, String(podSpec(job)['nodeName']), 'the per-node placeholder the page substitutes');
});

t.test('the ZDS socket the page tells ztunnel about is the one the DaemonSet serves', async (t) => {
  const sock = argOf(loader, '--zds-socket')!;
  t.match(doc, `\`INPOD_UDS\` defaults to\n\`${sock}\``, "ztunnel's default named as ambpf's socket");
  for (const m of doc.matchAll(/\/var\/run\/ztunnel[\w./-]*/g))
    t.ok(sock.startsWith(m[0]), `${m[0]} is the socket or its directory`);
});

t.test('the RBAC check the page gives is the grant the ClusterRole has', async (t) => {
  t.match(doc, 'kubectl auth can-i patch pods --subresource=status --as=system:serviceaccount:ambpf-system:ambpf');
  const rules = (at(only(manifests, 'ClusterRole'), 'rules') ?? []) as Array<{
    resources?: string[];
    verbs?: string[];
  }>;
  t.ok(
    rules.some((r) => r.resources?.includes('pods/status') && r.verbs?.includes('patch')),
    'patch on pods/status is granted',
  );
});

t.test('every ambpf command and flag the page uses exists', async (t) => {
  const uses = new Map<string, Set<string>>();
  for (const m of doc.matchAll(/\bambpf (run|status|pods|doctor|uninstall|build|cni)\b([^`\n|]*)/g)) {
    const flags = uses.get(m[1]!) ?? new Set<string>();
    for (const f of m[2]!.matchAll(/(--[a-z][\w-]*)/g)) flags.add(f[1]!);
    uses.set(m[1]!, flags);
  }
  // Flags the page names on their own, as the loader's args.
  for (const f of doc.matchAll(/`(--(?:mode|zds-socket|fail-open|cgroup|listen))[=`]/g))
    uses.get('run')?.add(f[1]!) ?? uses.set('run', new Set([f[1]!]));
  t.ok((uses.get('run')?.size ?? 0) >= 4, `run flags used: ${[...(uses.get('run') ?? [])].join(' ')}`);
  for (const [command, flags] of uses) {
    const { stdout } = await run(AMBPF, [command, '--help'], { timeout: 30_000 });
    // An option line starts with the flag, or with its short form: `  -j, --json`.
    for (const flag of flags)
      t.match(stdout, new RegExp(`^\\s+(?:-\\w, )?${flag}\\b`, 'm'), `ambpf ${command} --help lists ${flag}`);
  }
});

t.test('the CNI plugin section matches the DaemonSet and docs/cni.md', async (t) => {
  const section = /## New pods: the CNI plugin\n([\s\S]*?)\n## /.exec(doc)?.[1] ?? '';
  t.ok(section.length > 500, 'the section exists');
  const sock = argOf(loader, '--cni-socket')!;
  t.match(section, `{"type":"ambpf-cni","socketPath":"${sock}"}`, "the entry it shows names the loader's socket");
  const installer = containersOf(ds).main.find((c) => c.name === 'cni-install');
  t.ok(installer, 'the DaemonSet has the container the page names');
  t.match(section, '`cni-install`');
  const cm = (only(manifests, 'ConfigMap')['data'] ?? {}) as Record<string, string>;
  for (const key of section.match(/AMBPF_CNI_\w+/g) ?? []) t.ok(key in cm, `${key} is a ConfigMap key`);
  for (const volume of section.match(/`cni-(?:bin|conf)-dir`/g) ?? []) {
    const name = volume.replaceAll('`', '');
    t.ok(
      ((podSpec(ds)['volumes'] ?? []) as Array<{ name: string }>).some((v) => v.name === name),
      `volume ${name} exists`,
    );
  }
  t.match(section, `\`${cm['AMBPF_CNI_BIN_DIR']}\` and \`${cm['AMBPF_CNI_CONF_DIR']}\` by default`, 'the default dirs');
  // The ADD times it quotes are the ones measured in docs/cni.md.
  const cni = readFileSync(join(REPO_ROOT, 'docs/cni.md'), 'utf8');
  const latency = /\*\*ADD latency\*\*([\s\S]*?)(?:\n\n|$)/.exec(section)?.[1] ?? '';
  const quoted = latency.match(/\d+(?:-\d+)? ms/g) ?? [];
  t.ok(quoted.length >= 3, `the page quotes ADD times (${quoted.join(', ')})`);
  for (const q of quoted) t.match(cni, q, `docs/cni.md measured ${q}`);
});
