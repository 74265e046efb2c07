// Policy for what ambpf asks of a cluster: no privileged container, capabilities dropped to ALL and
// added back from a fixed list (each with a comment saying why), the host access the loader needs and
// nothing else (the ZDS socket directory ztunnel's chart shares among it), probes that hit the port the
// loader really listens on, RBAC read-only on pods and namespaces with one write (patch on pods/status,
// the redirection annotation), pinned images. Also the API server's own rules that the OpenAPI schema
// does not carry.
import t from 'tap';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseDocument, isMap, isSeq, isScalar, type Node } from 'yaml';
import {
  DEPLOY_DIR,
  REPO_ROOT,
  argOf,
  at,
  containersOf,
  loadManifests,
  only,
  parseFile,
  podSpec,
  type Container,
  type Json,
} from './manifests.ts';

const manifests = loadManifests();
const ds = only(manifests, 'DaemonSet');
const job = only(manifests, 'Job');
const configMap = only(manifests, 'ConfigMap');
const cmData = (configMap['data'] ?? {}) as Record<string, string>;
const dsContainers = containersOf(ds);
const loader = dsContainers.main.find((c) => c.name === 'loader')!;
const initMount = dsContainers.init.find((c) => c.name === 'mount-bpffs')!;
const cniInstall = dsContainers.main.find((c) => c.name === 'cni-install')!;
const uninstall = containersOf(job).main[0]!;

/**
 * ztunnel's side of ZDS, as Istio's ztunnel chart installs it (istio/istio
 * manifests/charts/ztunnel/templates/daemonset.yaml): the node's /var/run/ztunnel mounted at the same
 * path (volume cni-ztunnel-sock-dir, DirectoryOrCreate), and ztunnel's INPOD_UDS default inside it.
 */
const ZTUNNEL_SOCK_DIR = '/var/run/ztunnel';
const ZTUNNEL_INPOD_UDS = '/var/run/ztunnel/ztunnel.sock';
/** ambpf-cni's default socketPath (cni/ambpf-cni.c, `ambpf cni install --socket`). */
const CNI_SOCKET = '/var/run/ambpf/cni.sock';
const CNI_SOCK_DIR = '/var/run/ambpf';

/** The comment on item `i` of a YAML sequence (the yaml library hangs the first item's on the sequence). */
function commentOf(seq: Node, i: number): string {
  if (!isSeq(seq)) return '';
  const item = seq.items[i];
  const own = isScalar(item) || isMap(item) ? item.commentBefore : undefined;
  return (own ?? (i === 0 ? seq.commentBefore : undefined) ?? '').trim();
}

/** The only capabilities each container may add, and why it needs them (the YAML comments say more). */
const ALLOWED_CAPS: Record<string, readonly string[]> = {
  loader: ['BPF', 'NET_ADMIN', 'SYS_ADMIN', 'SYS_PTRACE', 'SYS_RESOURCE'],
  'mount-bpffs': ['SYS_ADMIN', 'SYS_CHROOT', 'SYS_PTRACE'],
  // Writes the node's CNI files as their owner (root): no capability at all.
  'cni-install': [],
  uninstall: ['BPF', 'NET_ADMIN', 'SYS_ADMIN', 'SYS_PTRACE'],
};

const every: Array<{ where: string; workload: Json; c: Container }> = [
  ...dsContainers.init.map((c) => ({ where: `DaemonSet init ${c.name}`, workload: ds, c })),
  ...dsContainers.main.map((c) => ({ where: `DaemonSet ${c.name}`, workload: ds, c })),
  ...containersOf(job).main.map((c) => ({ where: `Job ${c.name}`, workload: job, c })),
];

t.test('the workloads have the containers this policy describes', async (t) => {
  t.ok(loader, 'DaemonSet has the loader container');
  t.ok(initMount, 'DaemonSet has the mount-bpffs init container');
  t.ok(cniInstall, 'DaemonSet has the cni-install container');
  t.equal(containersOf(job).main.length, 1, 'the uninstall Job has one container');
  t.same(
    every.map((e) => e.c.name).sort(),
    Object.keys(ALLOWED_CAPS).sort(),
    'no container without a capability policy',
  );
});

t.test('no container is privileged; each drops ALL and adds exactly its allowed capabilities', async (t) => {
  for (const { where, c } of every) {
    const sc = c.securityContext ?? {};
    t.equal(sc['privileged'], false, `${where}: privileged is explicitly false`);
    t.same(at(sc, 'capabilities.drop'), ['ALL'], `${where}: drops ALL`);
    const add = (at(sc, 'capabilities.add') ?? []) as string[];
    t.same(
      [...add].sort(),
      [...(ALLOWED_CAPS[c.name] ?? [])].sort(),
      `${where}: adds exactly ${ALLOWED_CAPS[c.name]?.join(', ')}`,
    );
    t.notOk(
      add.some((cap) => cap.startsWith('CAP_')),
      `${where}: capability names without CAP_ (the Kubernetes spelling)`,
    );
    t.equal(
      at(sc, 'seccompProfile.type'),
      'RuntimeDefault',
      `${where}: RuntimeDefault seccomp (the capabilities above unlock bpf/setns/mount/pidfd_getfd in it)`,
    );
    t.equal(sc['readOnlyRootFilesystem'], true, `${where}: read-only root filesystem`);
  }
});

t.test('every added capability carries a comment saying why', async (t) => {
  // Comments live in the YAML source, so read it with the yaml Document API.
  for (const file of ['daemonset.yaml', 'uninstall/job.yaml']) {
    const doc = parseDocument(readFileSync(join(DEPLOY_DIR, file), 'utf8'));
    const seqs: Array<{ path: string; node: Node }> = [];
    const walk = (node: unknown, path: string): void => {
      if (isMap(node))
        for (const pair of node.items) walk(pair.value, `${path}.${isScalar(pair.key) ? String(pair.key.value) : '?'}`);
      else if (isSeq(node)) node.items.forEach((item, i) => walk(item, `${path}.${i}`));
      if (path.endsWith('.capabilities.add') && isSeq(node)) seqs.push({ path, node });
    };
    walk(doc.contents, '');
    t.ok(seqs.length > 0, `${file}: found capability lists`);
    for (const { path, node } of seqs) {
      if (!isSeq(node)) continue;
      node.items.forEach((item, i) => {
        const cap = isScalar(item) ? String(item.value) : '?';
        const comment = commentOf(node, i);
        t.ok(comment.length > 10, `${file} ${path}: ${cap} has a comment (${comment.split('\n')[0] ?? ''})`);
      });
    }
  }
});

t.test('rules the API server enforces beyond the schema', async (t) => {
  for (const { where, c } of every) {
    const privileged = at(c, 'securityContext.privileged') === true;
    for (const m of c.volumeMounts ?? []) {
      // "Bidirectional mount propagation is available only to privileged containers".
      if (m.mountPropagation === 'Bidirectional')
        t.ok(privileged, `${where}: Bidirectional on ${m.mountPath} needs privileged`);
      t.ok(
        ['HostToContainer', 'None', undefined].includes(m.mountPropagation),
        `${where}: ${m.mountPath} propagation ${m.mountPropagation ?? 'default'}`,
      );
    }
    // "cannot set allowPrivilegeEscalation to false and capabilities.Add CAP_SYS_ADMIN".
    const add = (at(c, 'securityContext.capabilities.add') ?? []) as string[];
    if (add.includes('SYS_ADMIN'))
      t.not(
        at(c, 'securityContext.allowPrivilegeEscalation'),
        false,
        `${where}: allowPrivilegeEscalation is not false next to SYS_ADMIN`,
      );
  }
  // The AppArmor annotation (pre-1.30) and field (1.30+) must agree, or 1.30+ rejects the pod.
  for (const workload of [ds, job]) {
    const annotations = (at(workload, 'spec.template.metadata.annotations') ?? {}) as Record<string, string>;
    const { init, main } = containersOf(workload);
    for (const c of [...init, ...main]) {
      const field = at(c, 'securityContext.appArmorProfile.type');
      const annotation = annotations[`container.apparmor.security.beta.kubernetes.io/${c.name}`];
      if (field === undefined) t.equal(annotation, undefined, `${c.name}: no AppArmor annotation without the field`);
      else
        t.equal(
          annotation,
          field === 'Unconfined' ? 'unconfined' : annotation,
          `${c.name}: AppArmor annotation matches the field`,
        );
    }
    for (const key of Object.keys(annotations).filter((k) => k.startsWith('container.apparmor'))) {
      const name = key.split('/')[1];
      t.ok(
        [...init, ...main].some((c) => c.name === name),
        `annotation ${key} names a real container`,
      );
    }
  }
});

t.test('host access: node netns and PID namespace, the bpffs, the cgroup v2 root', async (t) => {
  const spec = podSpec(ds);
  t.equal(spec['hostNetwork'], true, 'hostNetwork');
  t.equal(spec['hostPID'], true, 'hostPID: /proc/<pid>/cgroup and /proc/<pid>/ns/net of pod processes');
  t.equal(spec['dnsPolicy'], 'ClusterFirstWithHostNet');
  const volumes = (spec['volumes'] ?? []) as Array<{ name: string; hostPath?: { path: string } }>;
  const hostPathOf = (name: string): string | undefined => volumes.find((v) => v.name === name)?.hostPath?.path;
  const mount = (path: string) => (loader.volumeMounts ?? []).find((m) => m.mountPath === path);

  const bpffs = mount('/sys/fs/bpf');
  t.ok(bpffs, 'the loader mounts /sys/fs/bpf');
  t.equal(bpffs && hostPathOf(bpffs.name), '/sys/fs/bpf', "from the node's /sys/fs/bpf");
  t.equal(bpffs?.mountPropagation, 'HostToContainer', 'a bpffs mounted later on the node shows up');
  t.ok(
    cmData['AMBPF_BPFFS']?.startsWith('/sys/fs/bpf/'),
    `the pin dir ${cmData['AMBPF_BPFFS']} is inside the mounted bpffs`,
  );

  const cgroup = (loader.volumeMounts ?? []).find((m) => hostPathOf(m.name) === '/sys/fs/cgroup');
  t.ok(cgroup, "the node's cgroup v2 root is mounted");
  t.not(cgroup?.mountPath, '/sys/fs/cgroup', "not over the container's own cgroup view");

  const sysctl = loader.env?.find((e) => e.name === 'AMBPF_PROC_SYS_NET')?.value;
  const sysctlMount = sysctl ? mount(sysctl) : undefined;
  t.equal(
    sysctlMount && hostPathOf(sysctlMount.name),
    '/proc/sys/net',
    "the writable net sysctl dir is the node's /proc/sys/net",
  );
  t.not(sysctlMount?.readOnly, true);

  // inpod: ambpf serves ZDS where ztunnel's chart looks for it.
  t.equal(argOf(loader, '--mode'), 'inpod', 'the loader runs in inpod mode (ztunnel >= 1.23)');
  t.equal(argOf(loader, '--zds-socket'), ZTUNNEL_INPOD_UDS, "it listens on ztunnel's INPOD_UDS default");
  const zds = mount(ZTUNNEL_SOCK_DIR);
  t.ok(zds, `the loader mounts ${ZTUNNEL_SOCK_DIR}`);
  t.equal(dirname(argOf(loader, '--zds-socket') ?? ''), zds?.mountPath, 'the socket is inside that mount');
  const zdsVolume = volumes.find((v) => v.name === zds?.name) as
    { hostPath?: { path: string; type?: string } } | undefined;
  t.equal(
    zdsVolume?.hostPath?.path,
    ZTUNNEL_SOCK_DIR,
    "from the node's directory of the same path, the one ztunnel's pod mounts",
  );
  t.equal(zdsVolume?.hostPath?.type, 'DirectoryOrCreate', 'created by whichever of ambpf and ztunnel starts first');
  t.not(zds?.readOnly, true, 'writable: ambpf creates the socket there');

  // ambpf-cni: the loader serves it on the plugin's default socket, in a host dir at the same path.
  const cniSock = argOf(loader, '--cni-socket');
  t.equal(cniSock, CNI_SOCKET, 'the loader serves the CNI socket the plugin connects to by default');
  const cniSockMount = mount(dirname(cniSock ?? '?'));
  t.equal(cniSockMount && hostPathOf(cniSockMount.name), CNI_SOCK_DIR, "in the node's directory of the same path");
  t.not(cniSockMount?.readOnly, true, 'writable: the loader creates the socket there');
  t.ok(
    volumes.some(
      (v) =>
        v.name === cniSockMount?.name && (v.hostPath as { type?: string } | undefined)?.type === 'DirectoryOrCreate',
    ),
    'DirectoryOrCreate: nothing else makes it',
  );
  // The installer: the plugin's entry names that socket; the CNI dirs are mounted where its script looks.
  const script = cniInstall.command?.join('\n') ?? '';
  t.match(script, `--socket=${CNI_SOCKET}`, "the entry it writes names the loader's socket");
  for (const [volume, inContainer] of [
    ['cni-bin-dir', '/host/opt/cni/bin'],
    ['cni-conf-dir', '/host/etc/cni/net.d'],
  ] as const) {
    t.equal(
      cniInstall.volumeMounts?.find((m) => m.name === volume)?.mountPath,
      inContainer,
      `${volume} at ${inContainer}`,
    );
    t.match(script, `:-${inContainer}}`, `the script's default is ${inContainer}`);
    t.not(cniInstall.volumeMounts?.find((m) => m.name === volume)?.readOnly, true, `${volume} is writable`);
    t.equal(
      (volumes.find((v) => v.name === volume) as { hostPath?: { type?: string } }).hostPath?.type,
      'Directory',
      `${volume}: Directory, the primary CNI made it`,
    );
  }
  t.match(script, /trap .*TERM/, 'SIGTERM stops the watch first');
  t.match(script, /exec ambpf cni uninstall/, 'then removes the entry and binary');

  // Pods' netns by /proc/<pid>/ns/net: the node's PID namespace, setns and ptrace-read access.
  const caps = (at(loader.securityContext, 'capabilities.add') ?? []) as string[];
  t.ok(caps.includes('SYS_ADMIN'), "SYS_ADMIN: setns(2) into each pod's netns");
  t.ok(caps.includes('SYS_PTRACE'), 'SYS_PTRACE: /proc/<pid>/ns/net of pod processes that run as other users');

  // Exactly these host paths, nothing broader; each with the one container that mounts it and why.
  const HOST_PATHS: Record<string, { container: string; why: string }> = {
    '/proc/sys/net': { container: 'loader', why: 'net sysctls of the netns the loader enters' },
    '/sys/fs/bpf': { container: 'loader', why: 'pins that outlive the pod' },
    '/sys/fs/cgroup': { container: 'loader', why: 'attach under kubepods' },
    [ZTUNNEL_SOCK_DIR]: { container: 'loader', why: 'the ZDS socket ztunnel connects to' },
    [CNI_SOCK_DIR]: { container: 'loader', why: "the CNI socket the host's ambpf-cni connects to" },
    '/var/run/netns': { container: 'loader', why: "CNI_NETNS: a new pod's netns, opened by its path on the node" },
    [cmData['AMBPF_CNI_BIN_DIR'] ?? '?']: {
      container: 'cni-install',
      why: "the plugin binary goes into the host's CNI bin dir",
    },
    [cmData['AMBPF_CNI_CONF_DIR'] ?? '?']: {
      container: 'cni-install',
      why: "the entry goes into the primary CNI's conflist",
    },
  };
  const hostPaths = volumes.flatMap((v) => (v.hostPath ? [v.hostPath.path] : [])).sort();
  t.same(hostPaths, Object.keys(HOST_PATHS).sort(), `host paths: ${hostPaths.join(', ')}`);
  for (const [path, { container, why }] of Object.entries(HOST_PATHS)) {
    const volume = volumes.find((v) => v.hostPath?.path === path)?.name;
    const users = [...dsContainers.init, ...dsContainers.main].filter((c) =>
      (c.volumeMounts ?? []).some((m) => m.name === volume),
    );
    t.same(
      users.map((c) => c.name),
      [container],
      `${path} (${why}) is mounted by ${container} only`,
    );
  }
  t.notOk(
    volumes.some((v) => v.hostPath?.path === '/' || v.hostPath?.path === '/proc'),
    "neither the node's / nor its whole /proc",
  );
  t.notOk(
    volumes.some((v) => v.hostPath?.path?.includes('containerd.sock') || v.hostPath?.path?.includes('docker.sock')),
    'no container runtime socket',
  );

  // The init container mounts the bpffs through the node's PID 1, so it needs hostPID, not a volume.
  t.same(initMount.volumeMounts ?? [], [], 'the init container mounts nothing from the host');
  t.match(initMount.command?.join(' ') ?? '', /nsenter --mount=/, "it mounts in the node's mount namespace");
});

t.test('NODE_NAME comes from spec.nodeName; every $(VAR) in args is defined', async (t) => {
  const nodeName = loader.env?.find((e) => e.name === 'NODE_NAME');
  t.equal(at(nodeName, 'valueFrom.fieldRef.fieldPath'), 'spec.nodeName');
  for (const c of [loader, uninstall]) {
    const defined = new Set([
      ...(c.env ?? []).map((e) => e.name),
      ...((c.envFrom ?? []).some((e) => at(e, 'configMapRef.name') === 'ambpf-config') ? Object.keys(cmData) : []),
    ]);
    for (const arg of c.args ?? []) {
      for (const [, name] of arg.matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)) {
        t.ok(
          defined.has(name!),
          `${c.name}: $(${name}) in '${arg}' is defined (Kubernetes leaves unknown ones verbatim)`,
        );
      }
    }
    for (const e of c.env ?? []) {
      const ref = at(e, 'valueFrom.configMapKeyRef') as Json | undefined;
      if (ref) t.ok((ref['key'] as string) in cmData, `${c.name}: ConfigMap key ${String(ref['key'])} exists`);
    }
  }
  t.equal(
    at(uninstall, 'env.0.valueFrom.configMapKeyRef.key'),
    'AMBPF_BPFFS',
    'the uninstall Job works on the pins the loader made',
  );
});

t.test('probes point at the port and paths the loader serves', async (t) => {
  const listen = loader.args?.find((a) => a.startsWith('--listen='))?.slice('--listen='.length);
  t.ok(listen, 'the loader is given --listen');
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(listen ?? '');
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  // kubelet probes the pod IP (the node's IP with hostNetwork): a loopback listener is unreachable.
  t.ok(host === '0.0.0.0' || host === '::', `listens on all addresses (${host})`);
  const portOf = (p: unknown): number | undefined =>
    typeof p === 'number' ? p : loader.ports?.find((x) => x.name === p)?.containerPort;
  for (const [probe, path] of [
    ['startupProbe', '/healthz'],
    ['livenessProbe', '/healthz'],
    ['readinessProbe', '/readyz'],
  ] as const) {
    const get = at(loader[probe], 'httpGet') as Json | undefined;
    t.ok(get, `${probe} is an httpGet`);
    t.equal(get?.['path'], path, `${probe} -> ${path}`);
    t.equal(portOf(get?.['port']), port, `${probe} hits port ${port}, the --listen port`);
  }
  // /healthz and /readyz are the loader's real endpoints (src/server/http.ts).
  const http = readFileSync(join(REPO_ROOT, 'src/server/http.ts'), 'utf8');
  for (const path of ['/healthz', '/readyz', '/metrics']) t.match(http, `'${path}'`, `the loader serves ${path}`);
});

t.test('scheduling: every node, node-critical, rolling one node at a time, bounded resources', async (t) => {
  const spec = podSpec(ds);
  t.equal(spec['priorityClassName'], 'system-node-critical');
  const tolerations = (spec['tolerations'] ?? []) as Json[];
  t.ok(
    tolerations.some((x) => x['operator'] === 'Exists' && x['key'] === undefined && x['effect'] === undefined),
    'tolerates every taint',
  );
  t.equal(at(ds, 'spec.updateStrategy.type'), 'RollingUpdate');
  t.equal(at(ds, 'spec.updateStrategy.rollingUpdate.maxUnavailable'), 1);
  t.equal(
    at(ds, 'spec.updateStrategy.rollingUpdate.maxSurge'),
    0,
    'no surge: two loaders would share hostNetwork port',
  );
  const grace = spec['terminationGracePeriodSeconds'] as number;
  t.ok(grace >= 5 && grace <= 120, `terminationGracePeriodSeconds ${grace}`);
  for (const { where, c } of every) {
    t.ok(at(c, 'resources.requests.cpu') && at(c, 'resources.requests.memory'), `${where}: requests`);
    t.ok(at(c, 'resources.limits.memory'), `${where}: memory limit`);
  }
  const selector = at(ds, 'spec.selector.matchLabels') as Record<string, string>;
  const labels = at(ds, 'spec.template.metadata.labels') as Record<string, string>;
  for (const [k, v] of Object.entries(selector)) t.equal(labels[k], v, `template carries selector label ${k}`);
});

t.test('RBAC: get/list/watch on pods and namespaces; the one write is patch on pods/status', async (t) => {
  const role = only(manifests, 'ClusterRole');
  const rules = (role['rules'] ?? []) as Array<{
    apiGroups?: string[];
    resources?: string[];
    verbs?: string[];
    nonResourceURLs?: string[];
  }>;
  const grants = new Set<string>();
  for (const r of rules) {
    t.same(r.apiGroups, [''], 'core API group only');
    t.notOk(r.nonResourceURLs, 'no non-resource URLs');
    for (const res of r.resources ?? []) for (const verb of r.verbs ?? []) grants.add(`${verb} ${res}`);
  }
  const reads = ['get', 'list', 'watch'].flatMap((v) => [`${v} namespaces`, `${v} pods`]);
  t.same([...grants].sort(), [...reads, 'patch pods/status'].sort(), 'exactly these grants');
  t.same(
    [...grants].filter((g) => !/^(get|list|watch) /.test(g)),
    ['patch pods/status'],
    'the only write verb is patch, on pods/status',
  );
  t.notOk(grants.has('patch pods'), "not patch on pods: pods/status cannot change a pod's spec");
  t.notOk(JSON.stringify(rules).includes('*'), 'no wildcard');
  // Why the write is there, next to it.
  const doc = parseDocument(readFileSync(join(DEPLOY_DIR, 'clusterrole.yaml'), 'utf8'));
  const seq = doc.get('rules', true) as Node;
  rules.forEach((r, i) => {
    if ((r.verbs ?? []).every((v) => ['get', 'list', 'watch'].includes(v))) return;
    t.match(commentOf(seq, i), /annotation/, `rule ${i} (${r.verbs?.join(',')} ${r.resources?.join(',')}) says why`);
  });
  const binding = only(manifests, 'ClusterRoleBinding');
  t.same(binding['roleRef'], {
    apiGroup: 'rbac.authorization.k8s.io',
    kind: 'ClusterRole',
    name: at(role, 'metadata.name'),
  });
  const sa = only(manifests, 'ServiceAccount');
  t.same(binding['subjects'], [
    { kind: 'ServiceAccount', name: at(sa, 'metadata.name'), namespace: at(sa, 'metadata.namespace') },
  ]);
  t.equal(podSpec(ds)['serviceAccountName'], at(sa, 'metadata.name'), 'the DaemonSet runs as that ServiceAccount');
  t.equal(podSpec(job)['automountServiceAccountToken'], false, 'the uninstall Job has no API credentials');
});

t.test('the code writes to the API only what the ClusterRole grants: a merge patch of pods/status', async (t) => {
  // Every call of a write method of an API client in src/ (the testbed's own server excluded).
  const writes: string[] = [];
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) {
        if (p !== join(REPO_ROOT, 'src/testbed')) walk(p);
      } else if (e.name.endsWith('.ts')) {
        const text = readFileSync(p, 'utf8');
        const file = p.slice(REPO_ROOT.length);
        for (const m of text.matchAll(/\.((?:create|replace|patch|delete)\w*)\(/g)) writes.push(`${file} ${m[1]}`);
        // The generic object client, or a raw request with a write method (src/kube/list.ts is a GET).
        for (const m of text.matchAll(/KubernetesObjectApi|method: ?'(?:POST|PUT|PATCH|DELETE)'/g))
          writes.push(`${file} ${m[0]}`);
      }
    }
  };
  walk(join(REPO_ROOT, 'src'));
  // (Map.delete, String.replace and Object.create share the names; API methods name their resource.)
  const apiWrites = writes.filter((w) => /Namespaced|Pod|Namespace|Collection|KubernetesObjectApi|method/.test(w));
  t.same(
    apiWrites,
    ['src/agent/annotate.ts patchNamespacedPodStatus', "src/kube/pods.ts method: 'PATCH'"],
    `API writes in src/: ${apiWrites.join('; ')}`,
  );
  const annotate = readFileSync(join(REPO_ROOT, 'src/agent/annotate.ts'), 'utf8');
  t.match(annotate, /PatchStrategy\.MergePatch/, 'as a JSON merge patch');
});

t.test('images are pinned to the release, never latest', async (t) => {
  const version = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  for (const { where, c } of every) {
    const m = /^([^:@]+(?::\d+)?\/[^:@]+):([^:@]+)$/.exec(c.image ?? '');
    t.ok(m, `${where}: image ${c.image} has a tag`);
    t.not(m?.[2], 'latest', `${where}: not latest`);
    t.equal(m?.[2], version, `${where}: tag is the package version ${version}`);
    t.equal(c['imagePullPolicy' as keyof Container], 'IfNotPresent', `${where}: IfNotPresent`);
  }
  const [kustomization] = parseFile('kustomization.yaml');
  for (const img of (kustomization?.['images'] ?? []) as Array<{ newTag?: string }>)
    t.equal(img.newTag, version, 'kustomization pins the same tag');
});

t.test('the uninstall Job is a per-node template', async (t) => {
  const spec = podSpec(job);
  t.equal(spec['nodeName'], 'REPLACE_WITH_NODE_NAME', 'pinned to a node by substitution');
  t.equal(at(job, 'metadata.generateName'), 'ambpf-uninstall-', 'generateName: one Job per node with kubectl create');
  t.equal(spec['hostPID'], true, "finds ztunnel's netns through /proc");
  t.same(uninstall.args?.slice(0, 1), ['uninstall']);
  t.ok(at(job, 'spec.activeDeadlineSeconds'), 'bounded in time');
});
