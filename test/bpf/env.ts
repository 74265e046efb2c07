// A minimal node-topology environment of our own for the datapath tests: a node netns with one veth
// per pod netns (Calico-like: each pod's /24 gateway is the node end), a cgroup subtree for the pods,
// a bpffs directory. Pods: a = ambient client, z = ztunnel, b = ambient server, c = non-mesh peer.
// Everything carries the run's prefix and is removed in t.teardown, also on failure.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Test } from 'tap';
import { testPrefix } from '../helpers/prefix.ts';
import { cgroup2Root, killSubtree, makeCgroup, removeTree } from '../../src/testbed/cgroup.ts';
import { spawnIn, execIn, type TestbedProcess } from '../../src/testbed/exec.ts';
import { openDatapath, uninstallDatapath, type Datapath, type DatapathOptions } from '../../src/bpf/datapath.ts';
import { openInpodDatapath, type InpodDatapath, type InpodDatapathOptions } from '../../src/bpf/datapath-inpod.ts';
import { ifIndex, netnsCookie, withNetns } from '../../src/libbpf/index.ts';
import * as s from '../../src/bpf/schema.ts';
import { podListenerInodes, socketHolders } from '../../src/bpf/inpod-listeners.ts';

export const HELPER = resolve(import.meta.dirname, 'fixtures/sockhelper.py');
export const POD_INDEX = { a: 1, z: 2, b: 3, c: 4 } as const;
export type PodName = keyof typeof POD_INDEX;

/** An address as the python helper prints it. */
export interface Addr {
  ip: string;
  port: number;
}

/**
 * The helper server's answer to a connection: the port it was accepted on, the accepted socket's local
 * and peer addresses, and SO_ORIGINAL_DST (null where the server did not ask).
 */
export interface Hello {
  port: number;
  local: Addr;
  peer: Addr;
  orig: Addr | { error: number } | null;
}

export interface Pod {
  name: PodName;
  netns: string;
  cgroup: string;
  ip: string;
  hostIf: string;
  mac: string;
  hostMac: string;
}

export interface Env {
  prefix: string;
  bpffs: string;
  cgroup: string;
  node: string;
  pods: Record<PodName, Pod>;
  /** Start a process in a pod (netns + cgroup); killed in teardown. */
  spawn(pod: PodName, argv: string[]): TestbedProcess;
  /** Run the python helper in a pod and return its stdout lines parsed as JSON. */
  client(pod: PodName, args: string[], timeoutMs?: number): Promise<unknown[]>;
  /** Run any python helper mode (`bigopt`, …) in a pod and return its stdout lines parsed as JSON. */
  helper(pod: PodName, args: string[], timeoutMs?: number): Promise<unknown[]>;
  /** Start the python helper server in a pod and wait for "ready". */
  server(pod: PodName, args: string[]): Promise<TestbedProcess>;
  /**
   * Start a helper client in a pod that connects to ip:port, prints `{"paused": true}` and stays idle
   * (established) until the file `go` exists, then sends `bytes` in one chunk (jsonLines reads it).
   */
  pausedClient(pod: PodName, ip: string, port: number, go: string, bytes?: number): TestbedProcess;
}

function ip(args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8' });
}

function macOf(netns: string, ifname: string): string {
  const j = JSON.parse(ip(['-n', netns, '-j', 'link', 'show', 'dev', ifname])) as Array<{ address: string }>;
  return j[0]?.address ?? '';
}

export async function makeEnv(t: Test): Promise<Env> {
  const prefix = testPrefix();
  const cgroup = join(cgroup2Root(), prefix);
  const bpffs = join('/sys/fs/bpf', prefix);
  const nsName = (x: string): string => `${prefix}${x}`;
  const netnsPath = (x: string): string => `/run/netns/${nsName(x)}`;
  const procs: TestbedProcess[] = [];
  const made: string[] = [];

  t.teardown(async () => {
    procs.forEach((p) => p.kill('SIGKILL'));
    if (existsSync(cgroup)) {
      await killSubtree(cgroup).catch(() => undefined);
      removeTree(cgroup);
    }
    try {
      uninstallDatapath(bpffs, { netns: netnsPath('n') });
    } finally {
      rmSync(bpffs, { recursive: true, force: true });
    }
    for (const ns of made.reverse()) {
      try {
        ip(['netns', 'del', ns]);
      } catch {
        /* already gone */
      }
    }
  });

  mkdirSync(bpffs, { recursive: true });
  makeCgroup(cgroup);
  const node = nsName('n');
  ip(['netns', 'add', node]);
  made.push(node);
  ip(['-n', node, 'link', 'set', 'lo', 'up']);
  execFileSync('nsenter', [
    `--net=${netnsPath('n')}`,
    'sysctl',
    '-q',
    '-w',
    'net.ipv4.ip_forward=1',
    'net.ipv4.conf.all.rp_filter=0',
  ]);

  const pods = {} as Record<PodName, Pod>;
  for (const [name, i] of Object.entries(POD_INDEX) as Array<[PodName, number]>) {
    const ns = nsName(name);
    ip(['netns', 'add', ns]);
    made.push(ns);
    const hostIf = `${prefix}h${name}`;
    ip(['link', 'add', 'name', hostIf, 'netns', node, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    ip(['-n', node, 'addr', 'add', `198.18.${i}.1/24`, 'dev', hostIf]);
    ip(['-n', node, 'link', 'set', hostIf, 'up']);
    ip(['-n', ns, 'link', 'set', 'lo', 'up']);
    ip(['-n', ns, 'addr', 'add', `198.18.${i}.2/24`, 'dev', 'eth0']);
    ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
    ip(['-n', ns, 'route', 'add', 'default', 'via', `198.18.${i}.1`]);
    const podCg = join(cgroup, `pod-${name}`);
    makeCgroup(podCg);
    pods[name] = {
      name,
      netns: `/run/netns/${ns}`,
      cgroup: podCg,
      ip: `198.18.${i}.2`,
      hostIf,
      mac: macOf(ns, 'eth0'),
      hostMac: macOf(node, hostIf),
    };
  }

  const spawn = (pod: PodName, argv: string[]): TestbedProcess => {
    const p = spawnIn(pods[pod].cgroup, pods[pod].netns, argv, { pipe: true });
    procs.push(p);
    return p;
  };

  const helper = async (pod: PodName, args: string[], timeoutMs = 60_000): Promise<unknown[]> => {
    const r = await execIn(pods[pod].cgroup, pods[pod].netns, ['python3', HELPER, ...args], { timeoutMs });
    return r.stdout
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as unknown);
  };

  return {
    prefix,
    bpffs,
    cgroup,
    node: netnsPath('n'),
    pods,
    spawn,
    client(pod, args, timeoutMs = 60_000) {
      return helper(pod, ['client', ...args], timeoutMs);
    },
    helper,
    pausedClient(pod, ip, port, go, bytes = 65536) {
      const n = String(bytes);
      return spawn(pod, [
        'python3',
        '-u',
        HELPER,
        'client',
        ip,
        String(port),
        '--send',
        n,
        '--chunk',
        n,
        '--pause-file',
        go,
      ]);
    },
    async server(pod, args) {
      const p = spawn(pod, ['python3', '-u', HELPER, 'server', ...args]);
      await new Promise<void>((res, rej) => {
        const timer = setTimeout(() => rej(new Error(`helper server in ${pod} not ready after 10 s`)), 10_000);
        let buf = '';
        p.child.stdout?.on('data', (d: Buffer) => {
          buf += d.toString();
          if (buf.includes('ready')) {
            clearTimeout(timer);
            res();
          }
        });
        p.child.stderr?.on('data', (d: Buffer) => {
          buf += d.toString();
        });
        void p.exited.then((code) => {
          clearTimeout(timer);
          rej(new Error(`helper server in ${pod} exited (${code}): ${buf}`));
        });
      });
      return p;
    },
  };
}

/**
 * The node-topology inbound maps: the datapath opened, ztunnel = pod z in ambpf_ztunnel, pod b ambient
 * in ambpf_pods (its netns deliberately not in ambpf_netns: its own outbound is not redirected).
 * Nothing is attached: ztunnel's netns is not made ready (openNodeInbound does it).
 */
export async function openNodeInboundMaps(
  t: Test,
  env: Env,
  o: Pick<DatapathOptions, 'tcMode'> = {},
): Promise<{ dp: Datapath; ztHostIfindex: number }> {
  const { b, z } = env.pods;
  const dp = await openDatapath({ bpffs: env.bpffs, cgroup: env.cgroup, netns: env.node, ...o });
  t.teardown(() => dp.close());
  const ztHostIfindex = withNetns(env.node, () => ifIndex(z.hostIf));
  dp.maps.config.set(s.defaultConfig());
  dp.maps.ztunnel.set(
    s.ztunnelValue({
      ip: z.ip,
      netnsCookie: netnsCookie(z.netns),
      hostIfindex: ztHostIfindex,
      mac: z.mac,
      hostMac: z.hostMac,
    }),
  );
  dp.maps.pods.set(b.ip, {
    netnsCookie: netnsCookie(b.netns),
    hostIfindex: withNetns(env.node, () => ifIndex(b.hostIf)),
    flags: s.POD_AMBIENT,
  });
  return { dp, ztHostIfindex };
}

/**
 * The node-topology inbound setup most inbound tests share: openNodeInboundMaps, and ztunnel's stand-in
 * listening on 15006/15008 with IP_TRANSPARENT, its netns made ready. The tc program is not attached
 * yet: the test decides how and when.
 */
export async function openNodeInbound(
  t: Test,
  env: Env,
  o: Pick<DatapathOptions, 'tcMode'> = {},
): Promise<{ dp: Datapath; ztHostIfindex: number }> {
  const { dp, ztHostIfindex } = await openNodeInboundMaps(t, env, o);
  const { z } = env.pods;
  const standIn = await env.server('z', ['15006,15008', '--transparent']);
  await dp.attachZtunnel({ netnsPath: z.netns, pid: standIn.pid, hostIfname: z.hostIf });
  return { dp, ztHostIfindex };
}

/** ambpf_config of the inpod topology, as the inpod loader writes it. */
export const INPOD_CONFIG = s.defaultConfig({ flags: s.CFG_INPOD });

/**
 * The inpod setup the inpod tests share: the inpod datapath on the env's bpffs and pods' cgroup
 * (closed in teardown), INPOD_CONFIG, and ztunnel = pod z (no veth or MAC: inpod steers nothing to it).
 * No pod is captured yet (captureInpod).
 */
export async function openInpod(
  t: Test,
  env: Env,
  o: Pick<InpodDatapathOptions, 'mapSizes' | 'lockdownPath'> = {},
): Promise<InpodDatapath> {
  const { z } = env.pods;
  const dp = await openInpodDatapath({ bpffs: env.bpffs, cgroup: env.cgroup, ...o });
  t.teardown(() => dp.close());
  dp.maps.config.set(INPOD_CONFIG);
  const noMac = '00:00:00:00:00:00';
  dp.maps.ztunnel.set(
    s.ztunnelValue({ ip: z.ip, netnsCookie: netnsCookie(z.netns), hostIfindex: 0, mac: noMac, hostMac: noMac }),
  );
  return dp;
}

/**
 * Captures pod `name` in the inpod reconciler's order: armed (sk_lookup, tc), then the listeners of its
 * "ztunnel" process `zt` registered (none without `zt`), then its ambpf_pods/ambpf_netns entries with
 * `flags`, written even when the listeners could not be (a full map: the pod stays armed, fail closed).
 * Returns the pod's netns cookie.
 */
export function captureInpod(
  env: Env,
  dp: InpodDatapath,
  name: PodName,
  zt?: TestbedProcess,
  flags: number = s.POD_AMBIENT,
): bigint {
  const pod = env.pods[name];
  const cookie = netnsCookie(pod.netns);
  dp.armPod({ netnsPath: pod.netns, netnsCookie: cookie });
  try {
    if (zt)
      dp.setListeners({
        netnsPath: pod.netns,
        netnsCookie: cookie,
        ips: [pod.ip],
        listeners: ztunnelListeners(zt, name),
      });
  } finally {
    dp.maps.pods.set(pod.ip, { netnsCookie: cookie, hostIfindex: 0, flags });
    dp.maps.netns.set(cookie, { podIp: pod.ip, flags });
  }
  return cookie;
}

/** The JSON lines a helper process prints on stdout, collected as they come. */
export function jsonLines<T>(p: TestbedProcess): T[] {
  const lines: T[] = [];
  let buf = '';
  p.child.stdout?.on('data', (d: Buffer) => {
    buf += d.toString();
    const parts = buf.split('\n');
    buf = parts.pop() ?? '';
    for (const l of parts) if (l.startsWith('{')) lines.push(JSON.parse(l) as T);
  });
  return lines;
}

/** Tests of this directory import it from here; its home is test/helpers/wait.ts. */
export { waitUntil } from '../helpers/wait.ts';

/** ztunnel's 15001/15006/15008 listeners held by process `zt` in a pod (inpod), as the reconciler finds them. */
export function ztunnelListeners(
  zt: TestbedProcess,
  pod: string,
): { outbound: { pid: number; fd: number }; inbound: { pid: number; fd: number }; hbone: { pid: number; fd: number } } {
  const inodes = podListenerInodes(zt.pid, { outbound: s.PORT_OUTBOUND, inbound: s.PORT_INBOUND, hbone: s.PORT_HBONE });
  const holders = socketHolders([zt.pid]);
  const get = (inode: string | undefined): { pid: number; fd: number } => {
    const h = inode === undefined ? undefined : holders.get(inode);
    if (!h) throw new Error(`no ztunnel listener found in pod ${pod}`);
    return h;
  };
  return { outbound: get(inodes.outbound), inbound: get(inodes.inbound), hbone: get(inodes.hbone) };
}
