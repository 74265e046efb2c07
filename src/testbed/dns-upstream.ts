// The cluster's resolver for the testbed: dnsmasq (Debian's dnsmasq-base: one binary, no service, no
// change to the host's resolver) in a netns of its own, `<prefix>-dns`, plugged into the wire's bridge
// as if it were one more host of the node network. It plays kube-dns: the upstream the stand-in's DNS
// proxy forwards to, and what a pod whose DNS is not captured asks itself.
//   addresses   198.18.0.53-55 (v4, on the wire's /24: nodes reach it directly, pods through their node)
//               fd00:a3bf::53 (v6: the nodes have no IPv6 yet, so only a captured query gets there,
//               through ztunnel's proxy; a direct v6 query from a pod has no route)
//   answers     every `<pod>.<ns>.svc.cluster.local` with CLUSTER_VIP (a Service VIP, as kube-dns
//               would: ztunnel's proxy answers the same names with the pods' own addresses, so an
//               answer tells who gave it), the `records` given, NXDOMAIN for the rest of `.test`
//   log         every query with its source (`--log-queries`): which socket reached the upstream
// It dies with the testbed (its process is in `<cgroup2>/<prefix>/dns`, its netns carries the
// prefix); `stop()` ends it earlier.
//
// Pods use it through their resolv.conf: `podResolvConf()` writes /etc/netns/<pod netns>/resolv.conf,
// which `ip netns exec` bind-mounts over /etc/resolv.conf for the command it runs (cleanup.ts removes
// those directories with the testbed).
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Testbed } from './testbed.ts';
import type { TestbedPod } from './types.ts';
import type { TestbedProcess } from './exec.ts';
import { makeCgroup, removeTree } from './cgroup.ts';
import { ETC_NETNS } from './cleanup.ts';
import { TestbedTimeoutError } from './errors.ts';
import { inNetns, ipBatch, run } from './run.ts';
import { WIRE_PREFIX_LEN } from './addresses.ts';

/** The resolver's addresses on the wire; the first is the one pods are told about. */
export const DNS_UPSTREAM_IPS = ['198.18.0.53', '198.18.0.54', '198.18.0.55'] as const;
export const DNS_UPSTREAM_IP6 = 'fd00:a3bf::53';
/** What the upstream answers for every name of the cluster zone (a Service VIP, not a pod address). */
export const CLUSTER_VIP = '198.18.99.99';
/** The suffix of the testbed zone: kube-dns's domain, and the names ztunnel's proxy knows. */
export const CLUSTER_DOMAIN = 'svc.cluster.local';

export interface DnsUpstreamOptions {
  /** Extra names (lower-case, no trailing dot) -> addresses (A and AAAA by family). */
  readonly records?: Readonly<Record<string, readonly string[]>>;
}

export interface DnsUpstream {
  readonly ip: string;
  readonly ips: readonly string[];
  readonly ip6: string;
  readonly netnsPath: string;
  readonly logPath: string;
  /** Sources of the queries it logged for `name` ("198.19.1.3", …), in order. */
  queriesFor(name: string): string[];
  stop(): Promise<void>;
}

const SPAWN_TIMEOUT_MS = 10_000;

export interface DnsmasqOptions {
  readonly addresses: readonly string[];
  readonly port: number;
  /** Names (lower-case, no trailing dot) -> addresses (A and AAAA by family). */
  readonly records?: Readonly<Record<string, readonly string[]>>;
  /** Log every query with its source to this file. */
  readonly logPath?: string;
  readonly extra?: readonly string[];
}

/**
 * dnsmasq in the foreground as an authoritative-only server: nothing from the host (no resolv.conf, no
 * /etc/hosts, no forwarding anywhere), no cache (every answer is computed), NXDOMAIN for unknown
 * names under .test; the bench's DNS sink uses it too.
 */
export function dnsmasqArgv(o: DnsmasqOptions): string[] {
  const records = Object.entries(o.records ?? {}).map(([name, ips]) => `--host-record=${[name, ...ips].join(',')}`);
  return [
    'dnsmasq',
    '--keep-in-foreground',
    '--conf-file=/dev/null',
    '--pid-file',
    '--user=root',
    '--no-resolv',
    '--no-hosts',
    '--no-negcache',
    '--cache-size=0',
    '--local=/test/',
    '--bind-interfaces',
    ...o.addresses.map((ip) => `--listen-address=${ip}`),
    `--port=${o.port}`,
    ...records,
    ...(o.logPath === undefined ? [] : ['--log-queries=extra', `--log-facility=${o.logPath}`]),
    ...(o.extra ?? []),
  ];
}

async function listening(netnsPath: string, proc: TestbedProcess): Promise<void> {
  const want = (DNS_UPSTREAM_IPS.length + 1) * 2;
  const deadline = Date.now() + SPAWN_TIMEOUT_MS;
  let exited = false;
  void proc.exited.then(() => (exited = true));
  for (;;) {
    const r = await inNetns(netnsPath, ['ss', '-Hlnut', 'sport = :53'], { check: false });
    if (r.stdout.trim().split('\n').filter(Boolean).length >= want) return;
    if (exited || Date.now() > deadline)
      throw new TestbedTimeoutError('dnsmasq listening on UDP and TCP port 53', SPAWN_TIMEOUT_MS);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Starts the testbed's resolver (above); resolves once it answers on every address, UDP and TCP. */
export async function startDnsUpstream(tb: Testbed, o: DnsUpstreamOptions = {}): Promise<DnsUpstream> {
  const netns = `${tb.prefix}-dns`;
  const netnsPath = `/run/netns/${netns}`;
  const wire = tb.info.wireNetnsPath.slice('/run/netns/'.length);
  const cgroupPath = join(tb.info.cgroupPath, 'dns');
  const logPath = join(tb.info.runDir, 'dnsmasq.log');
  await run(['ip', 'netns', 'add', netns]);
  let proc: TestbedProcess | undefined;
  const stop = async (): Promise<void> => {
    if (proc && proc.child.exitCode === null && proc.child.signalCode === null) {
      proc.kill('SIGTERM');
      await proc.exited;
    }
    await run(['ip', 'netns', 'del', netns], { check: false });
    removeTree(cgroupPath);
  };
  try {
    await ipBatch(wire, [
      `link add dns0 type veth peer name eth0 netns ${netns}`,
      'link set dns0 master br0',
      'link set dns0 up',
    ]);
    await ipBatch(netns, [
      'link set lo up',
      `addr add ${DNS_UPSTREAM_IPS[0]}/${WIRE_PREFIX_LEN} dev eth0`,
      ...DNS_UPSTREAM_IPS.slice(1).map((ip) => `addr add ${ip}/32 dev eth0`),
      // nodad: dnsmasq binds the address right away; a tentative address cannot be bound.
      `addr add ${DNS_UPSTREAM_IP6}/64 dev eth0 nodad`,
      'link set eth0 up',
      // Answers to pods go back through the pod's node, as on a flat node network with pod routes.
      ...tb.nodes.map((n) => `route add ${n.podCidr} via ${n.wireIp} dev eth0`),
    ]);
    makeCgroup(cgroupPath);
    const argv = dnsmasqArgv({
      addresses: [...DNS_UPSTREAM_IPS, DNS_UPSTREAM_IP6],
      port: 53,
      logPath,
      ...(o.records ? { records: o.records } : {}),
      // The cluster zone, as kube-dns answers it: the Service VIP for every name of the testbed's pods.
      extra: [`--address=/${CLUSTER_DOMAIN}/${CLUSTER_VIP}`],
    });
    proc = tb.spawnAt(netnsPath, cgroupPath, argv, { logFile: join(tb.info.runDir, 'dnsmasq.out') });
    await listening(netnsPath, proc);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    ip: DNS_UPSTREAM_IPS[0],
    ips: DNS_UPSTREAM_IPS,
    ip6: DNS_UPSTREAM_IP6,
    netnsPath,
    logPath,
    queriesFor: (name) => queriesIn(logPath, name),
    stop,
  };
}

/** Sources of `query[…] NAME from SRC` lines in a dnsmasq log. */
export function queriesIn(logPath: string, name: string): string[] {
  let text: string;
  try {
    text = readFileSync(logPath, 'utf8');
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const m = / query\[\w+\] (\S+) from (\S+)$/.exec(line);
    if (m?.[1]?.toLowerCase() === name.toLowerCase() && m[2]) out.push(m[2]);
  }
  return out;
}

/**
 * Gives a pod its own resolv.conf for commands run through `podResolverArgv`: /etc/netns/<netns>/
 * resolv.conf, which `ip netns exec` bind-mounts over /etc/resolv.conf (in a mount namespace of the
 * command's own: the host's file is never touched).
 */
export function podResolvConf(pod: TestbedPod, content: string): string {
  const dir = join(ETC_NETNS, netnsNameOf(pod));
  mkdirSync(dir, { recursive: true });
  const path = join(dir, 'resolv.conf');
  writeFileSync(path, content);
  return path;
}

/** Removes what podResolvConf wrote for the pod (the testbed's removal does it anyway). */
export function removePodResolvConf(pod: TestbedPod): void {
  const dir = join(ETC_NETNS, netnsNameOf(pod));
  if (existsSync(dir)) rmSync(dir, { recursive: true, force: true });
}

/** argv run by `tb.exec(pod, …)` with the pod's resolv.conf in place: `ip netns exec <netns> …argv`. */
export function podResolverArgv(pod: TestbedPod, argv: readonly string[]): string[] {
  return ['ip', 'netns', 'exec', netnsNameOf(pod), ...argv];
}

function netnsNameOf(pod: TestbedPod): string {
  if (!pod.netnsPath.startsWith('/run/netns/'))
    throw new RangeError(`pod ${pod.namespace}/${pod.name} has no netns of its own`);
  return pod.netnsPath.slice('/run/netns/'.length);
}
