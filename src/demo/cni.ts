// The demo's CNI step (inpod): a new pod created the way kubelet and containerd create one, through
// the CNI chain (loopback, Debian's bridge + host-local as the primary CNI, ambpf-cni last), with its
// timeline. ztunnel is paused for a moment while the pod's ZDS Add is out, so the hold shows: the
// chain's ADD returns only once ztunnel acked, and only then may the runtime start a container.
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Testbed, TestbedPod, ZtunnelLogEntry } from '../testbed/index.ts';
import type { Loader } from '../testbed/loader.ts';
import { curl } from '../testbed/helpers.ts';
import { ztunnelsOn } from '../testbed/ztunnel/launch.ts';
import { CniChain, DEBIAN_CNI_BIN } from '../cni/chain.ts';
import { AmbpfError } from '../errors.ts';

const PLUGIN = fileURLToPath(new URL('../../build/cni/ambpf-cni', import.meta.url));
/** How long ztunnel is paused while the new pod's Add is out (well inside ADD's 10 s timeout). */
const HOLD_MS = 1000;

const pause = (ms: number): Promise<void> => new Promise((res) => setTimeout(res, ms));

/** The loader flags that make it serve the plugin, for the demo's loaders. */
export const demoCniSocket = (tb: Testbed, node: string): string => join(tb.info.runDir, `cni-${node}.sock`);

/** Whether this machine has what the step needs (the plugin built, Debian's CNI plugins installed). */
export function cniStepAvailable(): string | undefined {
  if (!existsSync(join(DEBIAN_CNI_BIN, 'bridge'))) {
    return `${DEBIAN_CNI_BIN}/bridge missing (make deps installs containernetworking-plugins)`;
  }
  if (!existsSync(PLUGIN)) return `${PLUGIN} missing (make cni)`;
  return undefined;
}

/**
 * Creates `new-app` in the ambient namespace `mesh` on the loader's node through the chain, prints the
 * timeline, and connects from it to `to` the moment ADD returned.
 */
export async function demoCniPod(
  tb: Testbed,
  loader: Loader,
  podsFile: string,
  to: TestbedPod,
  out: (line: string) => void,
): Promise<void> {
  const node = loader.node;
  const name = 'new-app';
  const uid = randomUUID();
  // As in Kubernetes, the Pod object exists (Pending, no IP) before kubelet asks for its sandbox.
  const list = JSON.parse(readFileSync(podsFile, 'utf8')) as { items: unknown[] };
  list.items.push({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: 'mesh', uid, labels: { app: name }, annotations: {} },
    spec: { nodeName: node.name, containers: [{ name: 'app', image: 'registry.local/ambtb/app:1' }] },
    status: { phase: 'Pending' },
  });
  writeFileSync(podsFile, JSON.stringify(list, null, 2));
  const netnsName = `${tb.info.prefix}-${name}`;
  const netnsPath = `/run/netns/${netnsName}`;
  const cgroup = join(node.kubepodsCgroup, 'besteffort', `pod${uid}`, 'app');
  const chain = new CniChain({
    plugin: PLUGIN,
    socketPath: demoCniSocket(tb, node.name),
    nodeNetnsPath: node.netnsPath,
    bridge: 'cni0',
    subnet: '198.19.200.0/24',
    ipamDir: join(tb.info.runDir, 'cni-ipam'),
  });

  const t0 = Date.now();
  const events: Array<[number, string]> = [];
  const at = (t: number, what: string): void => {
    events.push([t, what]);
  };
  execFileSync('ip', ['netns', 'add', netnsName]);
  mkdirSync(cgroup, { recursive: true });
  at(Date.now(), `sandbox: netns ${netnsName} created, no process in it`);
  const zt = ztunnelsOn(tb, node.name).at(-1);
  if (!zt) throw new AmbpfError(`no ztunnel on ${node.name}`);
  process.kill(zt.pid, 'SIGSTOP');
  at(Date.now(), `ztunnel (pid ${zt.pid}) paused for ${HOLD_MS} ms, so that the hold shows`);
  const resumed = pause(HOLD_MS).then(() => {
    at(Date.now(), 'ztunnel resumed');
    process.kill(zt.pid, 'SIGCONT');
  });
  let r: Awaited<ReturnType<CniChain['add']>>;
  try {
    r = await chain.add({ containerId: `${name}-sandbox`, netnsPath, namespace: 'mesh', name, uid });
  } finally {
    await resumed;
  }
  at(r.loopback.endedAt, 'loopback ADD: lo up');
  at(r.bridge.endedAt, `bridge + host-local ADD: eth0 ${r.ip ?? '?'} (prevResult)`);
  if (!r.ours || r.ours.code !== 0 || !r.ip) {
    const why = `bridge ${r.bridge.stderr.trim()} ambpf-cni ${r.ours?.stdout.trim() ?? ''}`;
    throw new AmbpfError(`the CNI chain failed: ${why}`);
  }
  at(r.ours.startedAt, 'ambpf-cni ADD: relayed to the agent (the runtime waits for it)');
  // The agent's side, from its log: armed (one reconcile pass), ZDS Add sent, ztunnel's ack.
  const log = loader.logLines();
  const served = log.find((l) => String(l['msg']).startsWith('CNI ADD: captured') && l['uid'] === uid);
  const took = log.find((l) => l['msg'] === 'ztunnel took the pod' && l['uid'] === uid);
  const phases = served?.['phases'] as Record<string, number> | undefined;
  if (served && phases) {
    const end = Number(served['time']);
    at(
      Math.round(end - (phases['ack'] ?? 0)),
      "agent: capture armed in the pod's netns (sk_lookup, return route), ZDS Add sent to ztunnel",
    );
  }
  if (took) at(Number(took['time']), 'agent: ztunnel acked the Add (its listeners are up in the pod)');
  at(r.ours.endedAt, "ambpf-cni ADD returned prevResult: only now may the runtime start the pod's containers");
  // The pod's first process, started at once: its connection goes through ztunnel.
  const pod: TestbedPod = {
    ...to,
    name,
    uid,
    ip: r.ip,
    ips: [r.ip],
    netnsPath,
    containerCgroupPath: cgroup,
    namespace: 'mesh',
    mesh: true,
  };
  const logLen = tb.ztunnelLog(node.name).length;
  const c = await curl(tb, pod, to.ip, 8080, { timeoutMs: 5000 });
  at(Date.now(), `first connect ${name} -> ${to.name} (${to.ip}:8080): curl exit ${c.exitCode}, HTTP ${c.status}`);
  // The stand-in logs a connection when it ends: wait for it, bounded.
  const outbound = (): ZtunnelLogEntry | undefined =>
    tb
      .ztunnelLog(node.name)
      .slice(logLen)
      .find((e) => e.direction === 'outbound');
  for (let i = 0; i < 50 && !outbound(); i++) await pause(50);
  const hop = outbound();

  out('');
  out(
    `  new pod through the CNI chain (loopback, bridge + host-local, ambpf-cni), as kubelet would: ` +
      `mesh/${name} on ${node.name}`,
  );
  events.sort((a, b) => a[0] - b[0]);
  for (const [t, what] of events) out(`    +${String(t - t0).padStart(5)} ms  ${what}`);
  out(
    hop
      ? `    the first connection went through ztunnel: ${hop.source} -> ztunnel:15001 ` +
          `(orig dst ${hop.originalDst}) [${hop.result}]`
      : '    the first connection was not seen by ztunnel',
  );
  if (c.exitCode !== 0 || !hop) {
    throw new AmbpfError(`the new pod's first connection did not go through ztunnel: ${c.stderr.trim()}`);
  }
}
