// Builds the local cluster (see index.ts for the contract) and owns it until down().
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import {
  hostVethName,
  nodePodCidr,
  nodePodCidr6,
  nodeWireIp,
  nodeWireIp6,
  podIp,
  podIp6,
  POD_GATEWAY,
  POD_GATEWAY6,
  WIRE_PREFIX_LEN,
  WIRE_PREFIX_LEN6,
} from './addresses.ts';
import { cgroup2Root, makeCgroup } from './cgroup.ts';
import { BPFFS_ROOT, PREFIX_FAMILY, removeByPrefix, runDirOf } from './cleanup.ts';
import { TestbedLookupError, TestbedTimeoutError } from './errors.ts';
import { execIn, spawnIn, type SpawnOptions, type TestbedProcess } from './exec.ts';
import { writePodsListFile } from './pods-list.ts';
import { ipBatch, run, sysctls, type RunOptions, type RunResult } from './run.ts';
import { defaultSpec, isMeshPod, normalizeSpec, type TestbedSpec, type Topology } from './spec.ts';
import type { TestbedInfo, TestbedNode, TestbedPod, TestbedZtunnel, ZtunnelLogEntry } from './types.ts';
import { startStandIns } from './ztunnel/launch.ts';
import { logger } from '../log.ts';

const log = logger('testbed');

/** Calico gives every host-side veth this MAC; pods reach their gateway 169.254.1.1 through it. */
const HOST_VETH_MAC = 'ee:ee:ee:ee:ee:ee';

export interface StartOptions {
  /** Name prefix; "ambtb" is prepended unless present. Default: "ambtb" + 4 random base36 chars. */
  readonly prefix?: string;
  readonly topology: Topology;
  /** Start the ztunnel stand-in (default true). Off for benchmarks that put raw sinks on the ztunnel ports. */
  readonly standIn?: boolean;
  /** Leave the processes running when this process exits (`ambpf testbed up`). */
  readonly detached?: boolean;
}

export function effectivePrefix(prefix: string | undefined): string {
  if (prefix === undefined) {
    const alphabet = '0123456789abcdefghijklmnopqrstuvwxyz';
    return PREFIX_FAMILY + [...randomBytes(4)].map((b) => alphabet[b % alphabet.length]).join('');
  }
  if (!/^[a-z0-9]{1,16}$/.test(prefix))
    throw new RangeError(`testbed prefix "${prefix}" must be 1-16 lowercase letters or digits`);
  return prefix.startsWith(PREFIX_FAMILY) ? prefix : PREFIX_FAMILY + prefix;
}

export type Target = string | TestbedPod | TestbedNode;

export class Testbed {
  readonly info: TestbedInfo;
  private readonly processes = new Set<TestbedProcess>();
  private readonly detached: boolean;
  private downPromise: Promise<void> | undefined;

  constructor(info: TestbedInfo, detached = false) {
    this.info = info;
    this.detached = detached;
  }

  get prefix(): string {
    return this.info.prefix;
  }
  get topology(): Topology {
    return this.info.topology;
  }
  get nodes(): readonly TestbedNode[] {
    return this.info.nodes;
  }
  get pods(): readonly TestbedPod[] {
    return this.info.pods;
  }
  get ztunnels(): readonly TestbedZtunnel[] {
    return this.info.ztunnels;
  }

  /** A pod by "namespace/name" or by name when that is unique. */
  pod(ref: string): TestbedPod {
    const [a, b] = ref.includes('/') ? ref.split('/', 2) : [undefined, ref];
    const hits = this.info.pods.filter((p) => p.name === b && (a === undefined || p.namespace === a));
    if (hits.length !== 1 || hits[0] === undefined)
      throw new TestbedLookupError(ref, hits.length > 1 ? 'unambiguous pod (give namespace/name)' : 'pod');
    return hits[0];
  }

  node(name: string): TestbedNode {
    const n = this.info.nodes.find((x) => x.name === name);
    if (!n) throw new TestbedLookupError(name, 'node');
    return n;
  }

  ztunnel(node: string): TestbedZtunnel {
    const z = this.info.ztunnels.find((x) => x.node === node);
    if (!z) throw new TestbedLookupError(node, 'ztunnel on node');
    return z;
  }

  /** Netns + cgroup a target runs in: a pod's container cgroup, or a node's system cgroup. */
  placement(target: Target): { netnsPath: string; cgroupPath: string } {
    if (typeof target !== 'string') {
      return 'uid' in target
        ? { netnsPath: target.netnsPath, cgroupPath: target.containerCgroupPath }
        : { netnsPath: target.netnsPath, cgroupPath: target.systemCgroup };
    }
    const node = this.info.nodes.find((n) => n.name === target);
    if (node) return this.placement(node);
    return this.placement(this.pod(target));
  }

  /**
   * Runs argv to completion inside the target's netns AND cgroup (a pod's container cgroup, or a node's
   * system cgroup), with the host's mounts (bpffs, cgroupfs visible). Throws on non-zero exit unless
   * `check: false`.
   */
  async exec(target: Target, argv: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
    const { netnsPath, cgroupPath } = this.placement(target);
    return execIn(cgroupPath, netnsPath, argv, opts);
  }

  /** Starts a long-running process in the target; down() kills it (everything in the testbed's cgroups dies). */
  spawn(target: Target, argv: readonly string[], opts: SpawnOptions = {}): TestbedProcess {
    const { netnsPath, cgroupPath } = this.placement(target);
    const p = spawnIn(cgroupPath, netnsPath, argv, { detached: this.detached, ...opts });
    this.processes.add(p);
    void p.exited.then(() => this.processes.delete(p));
    return p;
  }

  /** Spawns a process in an explicit netns + cgroup (the inpod stand-in: ztunnel's cgroup, a pod's netns). */
  spawnAt(netnsPath: string, cgroupPath: string, argv: readonly string[], opts: SpawnOptions = {}): TestbedProcess {
    const p = spawnIn(cgroupPath, netnsPath, argv, { detached: this.detached, ...opts });
    this.processes.add(p);
    void p.exited.then(() => this.processes.delete(p));
    return p;
  }

  /** Writes the Kubernetes List (Namespaces + Pods) the loader's --pods-file reads. */
  writePodsList(path: string): void {
    writePodsListFile(this.info, path);
  }

  /** The stand-in's connection log of a node, parsed (empty before the first connection). */
  ztunnelLog(node: string): ZtunnelLogEntry[] {
    const path = this.ztunnel(node).logPath;
    if (!existsSync(path)) return [];
    return readFileSync(path, 'utf8')
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => JSON.parse(l) as ZtunnelLogEntry);
  }

  /** Removes everything (idempotent): processes, netns (with their veths, routes, iptables, ipsets), cgroups, bpffs dirs, run dir. */
  down(): Promise<void> {
    this.downPromise ??= removeByPrefix(this.info.prefix);
    return this.downPromise;
  }

  toJSON(): TestbedInfo {
    return this.info;
  }
}

function containerId(): string {
  return randomBytes(32).toString('hex');
}

/** Plans names, addresses, uids and paths; no side effects. */
export function plan(spec: TestbedSpec, prefix: string, topology: Topology, cgroupRoot: string): TestbedInfo {
  const s = normalizeSpec(spec);
  const runDir = runDirOf(prefix);
  const cgroupPath = join(cgroupRoot, prefix);
  const nodes: TestbedNode[] = s.nodes.map((n, i) => {
    const index = i + 1;
    const netns = `${prefix}-${n.name}`;
    const nodeCg = join(cgroupPath, n.name);
    return {
      name: n.name,
      index,
      netns,
      netnsPath: `/run/netns/${netns}`,
      wireIp: nodeWireIp(index),
      wireIp6: nodeWireIp6(index),
      wireIfname: 'eth0',
      podCidr: nodePodCidr(index),
      podCidr6: nodePodCidr6(index),
      cgroupPath: nodeCg,
      kubepodsCgroup: join(nodeCg, 'kubepods'),
      systemCgroup: join(nodeCg, 'system'),
      bpffsDir: join(BPFFS_ROOT, `${prefix}-${n.name}`),
    };
  });
  const nsByName = new Map(s.namespaces.map((ns) => [ns.name, ns]));
  const perNode = new Map<string, number>();
  const pods: TestbedPod[] = s.pods.map((p) => {
    const node = nodes.find((n) => n.name === p.node) as TestbedNode;
    const uid = randomUUID();
    const cid = containerId();
    const podCg = join(node.kubepodsCgroup, 'besteffort', `pod${uid}`);
    const hostNetwork = p.hostNetwork ?? false;
    let ips = [node.wireIp];
    if (!hostNetwork) {
      const k = perNode.get(node.name) ?? 0;
      perNode.set(node.name, k + 1);
      // IPv4 first, as Kubernetes lists a dual-stack pod's podIPs.
      const families = new Set(p.ipFamilies ?? ['IPv4']);
      ips = [
        ...(families.has('IPv4') ? [podIp(node.index, k)] : []),
        ...(families.has('IPv6') ? [podIp6(node.index, k)] : []),
      ];
    }
    const netns = `${prefix}-pod-${p.namespace}-${p.name}`;
    const labels = p.labels ?? {};
    return {
      name: p.name,
      namespace: p.namespace,
      uid,
      node: node.name,
      labels,
      annotations: p.annotations ?? {},
      containers: p.containers ?? ['app'],
      hostNetwork,
      mesh: isMeshPod(p, nsByName.get(p.namespace)),
      isZtunnel: p.namespace === 'istio-system' && labels['app'] === 'ztunnel',
      ip: ips[0]!,
      ips,
      netnsPath: hostNetwork ? node.netnsPath : `/run/netns/${netns}`,
      cgroupPath: podCg,
      containerCgroupPath: join(podCg, cid),
      containerId: cid,
      hostIfname: hostNetwork ? '' : hostVethName(p.namespace, p.name),
      hostIfindex: 0,
      podIfname: hostNetwork ? '' : 'eth0',
      podMac: '',
      pausePid: 0,
    };
  });
  const ztunnels: TestbedZtunnel[] = pods
    .filter((p) => p.isZtunnel)
    .map((p) => ({
      node: p.node,
      pod: p.name,
      ip: p.ip,
      netnsPath: p.netnsPath,
      logPath: join(runDir, `ztunnel-${p.node}.log`),
    }));
  return {
    prefix,
    topology,
    runDir,
    cgroupRoot,
    cgroupPath,
    wireNetnsPath: `/run/netns/${prefix}-wire`,
    pkiDir: join(runDir, 'pki'),
    nodes,
    namespaces: s.namespaces.map((ns) => ({ name: ns.name, uid: randomUUID(), labels: ns.labels ?? {} })),
    pods,
    ztunnels,
  };
}

function netnsName(path: string): string {
  return path.slice('/run/netns/'.length);
}

async function buildNetwork(info: TestbedInfo): Promise<void> {
  const wire = netnsName(info.wireNetnsPath);
  // The nodes get their IPv6 wire addresses and routes whenever the kernel has IPv6 (cheap); pods get
  // IPv6 addresses only when their spec asks.
  const v6 = existsSync('/proc/sys/net/ipv6');
  await run(['ip', 'netns', 'add', wire]);
  for (const n of info.nodes) await run(['ip', 'netns', 'add', n.netns]);
  for (const p of info.pods) if (!p.hostNetwork) await run(['ip', 'netns', 'add', netnsName(p.netnsPath)]);
  // IPv6 addresses usable at once: no duplicate address detection (a second of "tentative") on any
  // interface made from here on, in any netns of the testbed.
  const noDad = { 'net.ipv6.conf.all.accept_dad': 0, 'net.ipv6.conf.default.accept_dad': 0 };
  if (existsSync('/proc/sys/net/ipv6')) {
    await Promise.all(
      [
        info.wireNetnsPath,
        ...info.nodes.map((n) => n.netnsPath),
        ...info.pods.filter((p) => !p.hostNetwork).map((p) => p.netnsPath),
      ].map((ns) => sysctls(ns, noDad)),
    );
  }

  // The wire: a bridge in its own netns, so nothing of the testbed ever lives in the root netns.
  await ipBatch(wire, [
    'link set lo up',
    'link add br0 type bridge',
    'link set br0 up',
    ...info.nodes.flatMap((n) => [
      `link add n${n.index} type veth peer name eth0 netns ${n.netns}`,
      `link set n${n.index} master br0`,
      `link set n${n.index} up`,
    ]),
  ]);

  await Promise.all(
    info.nodes.map(async (n) => {
      const pods = info.pods.filter((p) => p.node === n.name && !p.hostNetwork);
      await ipBatch(n.netns, [
        'link set lo up',
        `addr add ${n.wireIp}/${WIRE_PREFIX_LEN} dev eth0`,
        ...(v6 ? [`addr add ${n.wireIp6}/${WIRE_PREFIX_LEN6} dev eth0 nodad`] : []),
        'link set eth0 up',
        ...info.nodes
          .filter((o) => o !== n)
          .flatMap((o) => [
            `route add ${o.podCidr} via ${o.wireIp} dev eth0`,
            ...(v6 ? [`route add ${o.podCidr6} via ${o.wireIp6} dev eth0`] : []),
          ]),
        ...pods.flatMap((p) => [
          `link add ${p.hostIfname} address ${HOST_VETH_MAC} type veth peer name eth0 netns ${netnsName(p.netnsPath)}`,
          `link set ${p.hostIfname} up`,
          ...p.ips.map((ip) =>
            ip.includes(':')
              ? `route add ${ip}/128 dev ${p.hostIfname}`
              : `route add ${ip}/32 dev ${p.hostIfname} scope link`,
          ),
        ]),
      ]);
      await sysctls(n.netnsPath, {
        'net.ipv4.ip_forward': 1,
        'net.ipv4.conf.all.rp_filter': 0,
        'net.ipv4.conf.default.rp_filter': 0,
        ...(v6 ? { 'net.ipv6.conf.all.forwarding': 1 } : {}),
      });
      await Promise.all(
        pods.map((p) =>
          ipBatch(netnsName(p.netnsPath), [
            'link set lo up',
            ...p.ips.map((ip) =>
              ip.includes(':') ? `addr add ${ip}/128 dev eth0 nodad` : `addr add ${ip}/32 dev eth0`,
            ),
            'link set eth0 up',
            ...(p.ips.some((ip) => !ip.includes(':'))
              ? [
                  `route add ${POD_GATEWAY} dev eth0 scope link`,
                  `route add default via ${POD_GATEWAY} dev eth0`,
                  `neigh add ${POD_GATEWAY} lladdr ${HOST_VETH_MAC} dev eth0 nud permanent`,
                ]
              : []),
            // Calico's IPv6 recipe: the host veth's link-local address as gateway, its MAC pinned.
            ...(p.ips.some((ip) => ip.includes(':'))
              ? [
                  `route add default via ${POD_GATEWAY6} dev eth0`,
                  `neigh add ${POD_GATEWAY6} lladdr ${HOST_VETH_MAC} dev eth0 nud permanent`,
                ]
              : []),
          ]),
        ),
      );
    }),
  );
}

/** Host veth ifindexes and pod eth0 MACs, known only once the links exist. */
async function linkInfo(info: TestbedInfo): Promise<TestbedPod[]> {
  const byNode = new Map<string, Map<string, number>>();
  for (const n of info.nodes) {
    const r = await run(['ip', '-n', n.netns, '-j', 'link', 'show']);
    const links = JSON.parse(r.stdout) as { ifindex: number; ifname: string }[];
    byNode.set(n.name, new Map(links.map((l) => [l.ifname, l.ifindex])));
  }
  return Promise.all(
    info.pods.map(async (p) => {
      if (p.hostNetwork) return p;
      const r = await run(['ip', '-n', netnsName(p.netnsPath), '-j', 'link', 'show', 'dev', 'eth0']);
      const [eth0] = JSON.parse(r.stdout) as { address?: string }[];
      return { ...p, hostIfindex: byNode.get(p.node)?.get(p.hostIfname) ?? 0, podMac: eth0?.address ?? '' };
    }),
  );
}

async function waitFor(what: string, timeoutMs: number, check: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new TestbedTimeoutError(what, timeoutMs);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function inCgroup(pid: number, cgroupPath: string, cgroupRoot: string): boolean {
  try {
    const rel = cgroupPath.slice(cgroupRoot.length);
    return (
      readFileSync(`/proc/${pid}/cgroup`, 'utf8').includes(`0::${rel}\n`) &&
      readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'sleep'
    );
  } catch {
    return false;
  }
}

/** Builds the cluster; on any failure removes what it made and rethrows. */
export async function startTestbed(
  spec: TestbedSpec = defaultSpec(),
  opts: StartOptions = { topology: 'node' },
): Promise<Testbed> {
  const prefix = effectivePrefix(opts.prefix);
  const cgroupRoot = cgroup2Root();
  let info = plan(spec, prefix, opts.topology, cgroupRoot);
  const started = Date.now();
  try {
    mkdirSync(info.runDir, { recursive: true });
    if (!opts.detached) writeFileSync(join(info.runDir, 'owner'), `${process.pid}\n`);
    await buildNetwork(info);
    info = { ...info, pods: await linkInfo(info) };
    for (const n of info.nodes) {
      makeCgroup(n.systemCgroup);
      makeCgroup(join(n.kubepodsCgroup, 'besteffort'));
    }
    // A pause-like process per pod, in its netns and container cgroup: what the loader discovers.
    const pauses = info.pods.map((p) => {
      makeCgroup(p.containerCgroupPath);
      return spawnIn(p.containerCgroupPath, p.netnsPath, ['sleep', 'infinity'], { detached: true });
    });
    await Promise.all(
      info.pods.map((p, i) =>
        waitFor(`pause process of pod ${p.namespace}/${p.name}`, 5000, () =>
          inCgroup(pauses[i]?.pid ?? 0, p.containerCgroupPath, cgroupRoot),
        ),
      ),
    );
    info = { ...info, pods: info.pods.map((p, i) => ({ ...p, pausePid: pauses[i]?.pid ?? 0 })) };
    const tb = new Testbed(info, opts.detached ?? false);
    if (opts.standIn ?? true) await startStandIns(tb);
    writeFileSync(join(info.runDir, 'testbed.json'), JSON.stringify(info, null, 2) + '\n');
    log.info(
      { prefix, topology: opts.topology, nodes: info.nodes.length, pods: info.pods.length, ms: Date.now() - started },
      'testbed up',
    );
    return tb;
  } catch (err) {
    await removeByPrefix(prefix).catch((e: unknown) =>
      log.error({ err: e, prefix }, 'cleanup after failed start failed'),
    );
    throw err;
  }
}

/** Re-opens a running testbed (made by `ambpf testbed up`) from its run dir. */
export function attachTestbed(prefix: string): Testbed {
  const p = effectivePrefix(prefix);
  const file = join(runDirOf(p), 'testbed.json');
  if (!existsSync(file)) throw new TestbedLookupError(p, 'running testbed (no testbed.json in its run dir)');
  return new Testbed(JSON.parse(readFileSync(file, 'utf8')) as TestbedInfo, true);
}
