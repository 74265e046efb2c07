// deploy/ is what `kubectl apply -k deploy/` reads: every file parses, every object validates against
// the Kubernetes OpenAPI schemas (kubernetes-models), no field is misspelled (the schemas allow
// unknown fields; TypeScript's excess-property check on the models' interfaces does not), and
// kustomization.yaml lists exactly the install manifests.
import t from 'tap';
import { parseAllDocuments } from 'yaml';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Namespace, ServiceAccount, ConfigMap } from 'kubernetes-models/v1';
import { ClusterRole, ClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';
import { DaemonSet } from 'kubernetes-models/apps/v1';
import { Job } from 'kubernetes-models/batch/v1';
import { DEPLOY_DIR, REPO_ROOT, loadManifests, parseFile, yamlFiles, type Json, type Manifest } from './manifests.ts';

const run = promisify(execFile);

interface Validatable {
  validate(): void;
}
type Model = new (data: never) => Validatable;

/** kind -> [apiVersion, model class, TypeScript interface import for the strict-field check]. */
const MODELS: Record<string, readonly [string, Model, string]> = {
  Namespace: [
    'v1',
    Namespace as unknown as Model,
    "import type { INamespace as T } from 'kubernetes-models/v1/Namespace';",
  ],
  ServiceAccount: [
    'v1',
    ServiceAccount as unknown as Model,
    "import type { IServiceAccount as T } from 'kubernetes-models/v1/ServiceAccount';",
  ],
  ConfigMap: [
    'v1',
    ConfigMap as unknown as Model,
    "import type { IConfigMap as T } from 'kubernetes-models/v1/ConfigMap';",
  ],
  ClusterRole: [
    'rbac.authorization.k8s.io/v1',
    ClusterRole as unknown as Model,
    "import type { IClusterRole as T } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole';",
  ],
  ClusterRoleBinding: [
    'rbac.authorization.k8s.io/v1',
    ClusterRoleBinding as unknown as Model,
    "import type { IClusterRoleBinding as T } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding';",
  ],
  DaemonSet: [
    'apps/v1',
    DaemonSet as unknown as Model,
    "import type { IDaemonSet as T } from 'kubernetes-models/apps/v1/DaemonSet';",
  ],
  Job: ['batch/v1', Job as unknown as Model, "import type { IJob as T } from 'kubernetes-models/batch/v1/Job';"],
};

const manifests: Manifest[] = loadManifests();

t.test('every YAML file under deploy/ parses strictly', async (t) => {
  const files = yamlFiles();
  t.ok(files.length >= 8, `found ${files.length} files`);
  for (const f of files) t.doesNotThrow(() => parseFile(f), f);
});

t.test('every object is a known kind and validates against the Kubernetes schema', async (t) => {
  t.same([...new Set(manifests.map((m) => m.kind))].sort(), Object.keys(MODELS).sort(), 'one of each kind ambpf ships');
  for (const m of manifests) {
    const entry = MODELS[m.kind];
    if (!entry) {
      t.fail(`${m.file}: unexpected kind ${m.kind}`);
      continue;
    }
    const [apiVersion, Cls] = entry;
    t.equal(m.object['apiVersion'], apiVersion, `${m.file}: apiVersion`);
    t.doesNotThrow(() => new Cls(m.object as never).validate(), `${m.file}: ${m.kind} ${m.name} is valid`);
  }
});

t.test('the schema check is not vacuous: a wrong type and a missing field are rejected', async (t) => {
  const ds = manifests.find((m) => m.kind === 'DaemonSet')!.object;
  const broken = structuredClone(ds) as Json;
  ((broken['spec'] as Json)['template'] as Json)['spec'] = { containers: [{ name: 'loader', image: 42 }] };
  t.throws(() => new DaemonSet(broken as never).validate(), 'image must be a string');
  const noSelector = structuredClone(ds) as Json;
  delete (noSelector['spec'] as Json)['selector'];
  t.throws(() => new DaemonSet(noSelector as never).validate(), 'selector is required');
});

t.test('no misspelled field anywhere: TypeScript checks each object against the model interface', async (t) => {
  // The OpenAPI schemas accept unknown keys (a typo such as `mountPropogation` would pass and be
  // silently dropped by the API server); an object literal typed with the model's interface makes
  // tsc reject every key the API does not have, at any depth.
  // Under build/ (git-ignored) so that tsc resolves kubernetes-models from the repo's node_modules.
  mkdirSync(join(REPO_ROOT, 'build'), { recursive: true });
  const dir = mkdtempSync(join(REPO_ROOT, 'build', 'deploy-fields-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const files: string[] = [];
  manifests.forEach((m, i) => {
    const file = join(dir, `m${i}.ts`);
    writeFileSync(
      file,
      `${MODELS[m.kind]![2]}\n// ${m.file}\nexport const manifest: T = ${JSON.stringify(m.object, null, 2)};\n`,
    );
    files.push(file);
  });
  // A deliberately misspelled copy proves the check catches typos.
  const ds = manifests.find((m) => m.kind === 'DaemonSet')!;
  const typo = JSON.stringify(ds.object).replace('"mountPropagation"', '"mountPropogation"');
  const typoFile = join(dir, 'typo.ts');
  writeFileSync(typoFile, `${MODELS['DaemonSet']![2]}\nexport const manifest: T = ${typo};\n`);

  const tsc = [
    join(REPO_ROOT, 'node_modules/typescript/bin/tsc'),
    '--noEmit',
    '--strict',
    '--skipLibCheck',
    '--module',
    'nodenext',
    '--moduleResolution',
    'nodenext',
    '--target',
    'es2022',
  ];
  const check = async (paths: string[]): Promise<string> => {
    try {
      await run(process.execPath, [...tsc, ...paths], { cwd: REPO_ROOT, timeout: 120_000 });
      return '';
    } catch (err) {
      return String((err as { stdout?: string }).stdout ?? err);
    }
  };
  t.equal(await check(files), '', 'every manifest uses only fields the Kubernetes API defines');
  t.match(await check([typoFile]), /mountPropogation/, 'a misspelled field is reported');
});

t.test('kustomization.yaml lists every install manifest, and each listed file exists', async (t) => {
  const [kustomization] = parseFile('kustomization.yaml');
  const resources = (kustomization?.['resources'] ?? []) as string[];
  for (const r of resources) t.ok(existsSync(join(DEPLOY_DIR, r)), `${r} exists`);
  t.equal(new Set(resources).size, resources.length, 'no resource listed twice');
  // The uninstall Job is the one deliberate omission: applying it at install time would remove
  // what the DaemonSet just pinned.
  const installFiles = yamlFiles().filter((f) => f !== 'kustomization.yaml' && !f.startsWith('uninstall/'));
  t.same([...resources].sort(), installFiles, 'the resources are exactly the top-level manifests');
  t.notOk(
    resources.some((r) => r.startsWith('uninstall')),
    'the uninstall Job is not installed',
  );
  t.equal(kustomization?.['namespace'], 'ambpf-system');
  for (const m of manifests.filter((m) => !['Namespace', 'ClusterRole', 'ClusterRoleBinding'].includes(m.kind))) {
    t.equal((m.object['metadata'] as Json)['namespace'], 'ambpf-system', `${m.file} lives in ambpf-system`);
  }
});

t.test('the CNI dirs: ConfigMap values, copied into the hostPath volumes by kustomize', async (t) => {
  const cm = (manifests.find((m) => m.kind === 'ConfigMap')!.object['data'] ?? {}) as Record<string, string>;
  const volumesOf = (ds: Json): Array<{ name: string; hostPath?: { path: string } }> =>
    ((((ds['spec'] as Json)['template'] as Json)['spec'] as Json)['volumes'] ?? []) as Array<{
      name: string;
      hostPath?: { path: string };
    }>;
  const pathOf = (ds: Json, name: string): string | undefined =>
    volumesOf(ds).find((v) => v.name === name)?.hostPath?.path;
  const ds = manifests.find((m) => m.kind === 'DaemonSet')!.object;
  const PAIRS = [
    ['AMBPF_CNI_BIN_DIR', 'cni-bin-dir'],
    ['AMBPF_CNI_CONF_DIR', 'cni-conf-dir'],
  ] as const;
  // `kubectl apply -f` (no kustomize) gets the same dirs as long as the values are the defaults.
  for (const [key, volume] of PAIRS) t.equal(pathOf(ds, volume), cm[key], `${volume} defaults to ${key} (${cm[key]})`);
  const kubectl = await run('kubectl', ['version', '--client'], { timeout: 30_000 }).then(
    () => true,
    () => false,
  );
  if (!kubectl) return t.plan(0, 'skip: kubectl is not installed: the replacements cannot be built here');
  // A copy of deploy/ with other values, built the way `kubectl apply -k` builds it.
  const dir = mkdtempSync(join(REPO_ROOT, 'build', 'deploy-kustomize-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  cpSync(DEPLOY_DIR, dir, { recursive: true });
  const cmFile = join(dir, 'configmap.yaml');
  writeFileSync(
    cmFile,
    readFileSync(cmFile, 'utf8')
      .replace(/^( {2}AMBPF_CNI_BIN_DIR:).*$/m, '$1 /var/lib/rancher/k3s/data/cni')
      .replace(/^( {2}AMBPF_CNI_CONF_DIR:).*$/m, '$1 /var/lib/rancher/k3s/agent/etc/cni/net.d'),
  );
  const { stdout } = await run('kubectl', ['kustomize', dir], { timeout: 60_000 });
  const built = parseAllDocuments(stdout).map((d) => d.toJS() as Json);
  const out = built.find((o) => o['kind'] === 'DaemonSet')!;
  t.equal(pathOf(out, 'cni-bin-dir'), '/var/lib/rancher/k3s/data/cni', 'the bin dir follows the ConfigMap');
  t.equal(
    pathOf(out, 'cni-conf-dir'),
    '/var/lib/rancher/k3s/agent/etc/cni/net.d',
    'the conf dir follows the ConfigMap',
  );
  const others = (d: Json): unknown[] => volumesOf(d).filter((v) => !PAIRS.some(([, n]) => n === v.name));
  t.same(others(out), others(ds), 'no other volume changed');
});
