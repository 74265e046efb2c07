// The embedded default: a two-node cluster in network namespaces on the eBPF path. It starts one
// `ambpf run` per node (as a DaemonSet would), sends a same-node, a cross-node and a plaintext
// inbound request, and shows the path each took from the ztunnel stand-in's logs and the
// datapath's own counters. Everything is torn down at the end, also on failure or Ctrl-C.
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { startTestbed, defaultSpec, type Testbed, type ZtunnelLogEntry } from '../testbed/index.ts';
import { startHttpServer, curl } from '../testbed/helpers.ts';
import { startLoader, waitReady, zdsSocketPath, AMBPF_BIN, type Loader } from '../testbed/loader.ts';
import { startZtunnels } from '../testbed/ztunnel/launch.ts';
import type { StateFile } from '../state/state-file.ts';
import { linkNames, parseLinkName } from '../bpf/pins.ts';
import {
  CLUSTER_VIP,
  podResolvConf,
  podResolverArgv,
  startDnsUpstream,
  type DnsUpstream,
} from '../testbed/dns-upstream.ts';
import { openPinnedMaps } from '../bpf/datapath-maps.ts';
import type { Stats } from '../bpf/schema.ts';
import { AmbpfError } from '../errors.ts';
import { cniStepAvailable, demoCniPod, demoCniSocket } from './cni.ts';

export interface DemoOptions {
  readonly out: (line: string) => void;
  /** node: ztunnel in its own pod (tc + sk_lookup inbound); inpod: ztunnel's listeners in every mesh pod. */
  readonly mode?: 'node' | 'inpod';
}

const pause = (ms: number): Promise<void> => new Promise((res) => setTimeout(res, ms));

function readState(l: Loader): StateFile | undefined {
  try {
    return JSON.parse(readFileSync(l.stateFile, 'utf8')) as StateFile;
  } catch {
    return undefined;
  }
}

/** Inpod: every mesh pod armed, handed to ztunnel over ZDS and acked (the loader's state file says so). */
async function waitInpodServed(tb: Testbed, loaders: readonly Loader[], deadlineMs: number): Promise<void> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const pending = loaders.flatMap((l) => {
      const want = tb.info.pods.filter((p) => p.node === l.node.name && p.mesh).map((p) => p.name);
      const acked = new Set((readState(l)?.pods ?? []).filter((p) => p.zds?.state === 'acked').map((p) => p.name));
      return want.filter((name) => !acked.has(name));
    });
    const linked = tb.info.nodes.every((n) => linkNames(n.bpffsDir).some((f) => parseLinkName(f)?.kind === 'inpod'));
    if (pending.length === 0 && linked) return;
    if (Date.now() > end) throw new AmbpfError(`ztunnel has not taken ${pending.join(', ')} after ${deadlineMs} ms`);
    await pause(100);
  }
}

/** The ZDS exchange of a node, from its loader's log (src/zds/server.ts) and state file. */
function describeZds(tb: Testbed, l: Loader): string[] {
  const lines = l.logLines().filter((e) => e['component'] === 'zds');
  const connected = lines.find((e) => e['msg'] === 'ztunnel connected');
  const hello = lines.find((e) => e['msg'] === 'ztunnel said hello');
  const snapshot = lines.find((e) => e['msg'] === 'snapshot acked');
  const pods = (readState(l)?.pods ?? []).filter((p) => p.zds).map((p) => `${p.namespace}/${p.name} ${p.zds?.state}`);
  return [
    `    ${l.node.name.padEnd(6)} ztunnel (pid ${String(connected?.['peerPid'] ?? '?')}) connected to ${zdsSocketPath(tb, l.node)}, ` +
      `hello ${String(hello?.['version'] ?? '?')}`,
    `    ${l.node.name.padEnd(6)} snapshot: ${String(snapshot?.['items'] ?? '?')} x Add (workload info + the pod's netns fd), ` +
      `SnapshotSent -> acked; pods: ${pods.join(', ')}`,
  ];
}

interface Hop {
  readonly node: string;
  readonly entry: ZtunnelLogEntry;
}

function describeHop(h: Hop): string {
  const e = h.entry;
  const where = e.where === 'ztunnel-pod' || e.where.startsWith('ztunnel') ? 'ztunnel' : `ztunnel@${e.where}`;
  const how =
    e.direction === 'outbound'
      ? `outbound  ${e.source} -> ${where}:15001 (orig dst ${e.originalDst} via ${e.dstFrom}) -> ${e.upstream}`
      : e.direction === 'inbound-hbone'
        ? `inbound   HBONE ${e.source} -> ${where}:15008 (:authority ${e.originalDst}) -> ${e.upstream}`
        : `inbound   ${e.source} -> ${where}:15006 (orig dst ${e.originalDst} via ${e.dstFrom}) -> ${e.upstream}`;
  return `    ${h.node.padEnd(6)} ${how}  [${e.result}]`;
}

function counterDelta(before: Stats, after: Stats): string {
  const moved = (Object.keys(after) as Array<keyof Stats>)
    .filter((k) => after[k] !== before[k] && !k.endsWith('_bytes'))
    .map((k) => `${k}+${after[k] - before[k]}`);
  return moved.length ? moved.join(' ') : '(none)';
}

/**
 * Inpod: a name looked up with glibc in a mesh pod (captured: ztunnel's proxy answers with the pod's
 * address, from the resolver's address) and in a pod outside the mesh (the resolver: a Service VIP).
 */
async function dnsLookups(tb: Testbed, upstream: DnsUpstream, out: (line: string) => void): Promise<void> {
  const name = 'app1-node2.mesh.svc.cluster.local';
  out('');
  out(`  DNS: getent ahostsv4 ${name}, resolv.conf: nameserver ${upstream.ip} (dnsmasq, the cluster's resolver)`);
  for (const pod of [tb.pod('app2-node1'), tb.pod('client-node1')]) {
    podResolvConf(pod, `nameserver ${upstream.ip}\noptions timeout:2 attempts:2\n`);
    const maps = openPinnedMaps(tb.node(pod.node).bpffsDir);
    const before = maps.stats();
    const r = await tb.exec(pod, podResolverArgv(pod, ['getent', 'ahostsv4', name]), {
      check: false,
      timeoutMs: 10_000,
    });
    const after = maps.stats();
    maps.close();
    const ip = r.stdout.trim().split(/\s+/)[0] || '(no answer)';
    const who = !pod.mesh
      ? `the resolver itself (${CLUSTER_VIP} is its Service VIP)`
      : `ztunnel's DNS proxy in the pod (UDP to ${upstream.ip}:53 went to 127.0.0.1:15053; the answer came from ${upstream.ip})`;
    out(`    ${pod.name.padEnd(12)} ${pod.mesh ? 'mesh   ' : 'no mesh'}  -> ${ip}  ${who}`);
    if (pod.mesh) out(`    ${pod.node.padEnd(12)} counters: ${counterDelta(before, after)}`);
  }
}

export async function runDemo(o: DemoOptions): Promise<number> {
  const started = Date.now();
  const mode = o.mode ?? 'inpod';
  o.out(
    mode === 'inpod'
      ? 'ambpf demo (inpod topology, Istio 1.23+): two nodes in network namespaces; on each, ambpf run is the node agent: it captures every mesh pod in eBPF and hands it over ZDS to the ztunnel stand-in, which opens its listeners inside the pod'
      : 'ambpf demo (node topology, ztunnel <= 1.22): two nodes in network namespaces, a ztunnel stand-in on each node, ambpf on the eBPF path',
  );
  let tb: Testbed | undefined;
  const loaders: Loader[] = [];
  let upstream: DnsUpstream | undefined;
  const cleanup = async (): Promise<void> => {
    for (const l of loaders) l.proc.kill('SIGTERM');
    await Promise.all(loaders.map((l) => l.proc.exited));
    await tb?.down();
  };
  const onSignal = (): void => {
    void cleanup().then(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    // Inpod captures IPv6 as IPv4: there the mesh pods are dual-stack, and one request goes over IPv6.
    const spec = defaultSpec();
    const dual =
      mode === 'inpod'
        ? {
            ...spec,
            pods: spec.pods.map((p) => (p.namespace === 'mesh' ? { ...p, ipFamilies: ['IPv4', 'IPv6'] as const } : p)),
          }
        : spec;
    tb = await startTestbed(dual, { topology: mode, standIn: mode === 'node' });
    const bed = tb;
    const podsFile = join(bed.info.runDir, 'pods.json');
    bed.writePodsList(podsFile);
    o.out(
      `  testbed ${bed.info.prefix}: ${bed.info.nodes.length} nodes, ${bed.info.pods.length} pods (198.18.0.0/15` +
        `${mode === 'inpod' ? ', mesh pods dual-stack with fd00:a3bf::/32' : ''})`,
    );
    // inpod: each loader also serves the CNI plugin (the CNI step below creates a pod through it).
    const cniFlags = (node: string): string[] => (mode === 'inpod' ? ['--cni-socket', demoCniSocket(bed, node)] : []);
    for (const node of bed.info.nodes)
      loaders.push(startLoader(bed, node, podsFile, cniFlags(node.name), mode === 'inpod'));
    await Promise.all(loaders.map((l) => waitReady(bed, l)));
    if (mode === 'inpod') {
      // ztunnel connects to the agent (its INPOD_UDS), says hello, takes the snapshot of captured pods.
      upstream = await startDnsUpstream(bed);
      const dnsUpstream = `${upstream.ip}:53`;
      await startZtunnels(bed, { zdsSocket: (node) => zdsSocketPath(bed, bed.node(node)), dnsUpstream });
      await waitInpodServed(bed, loaders, 20_000);
      o.out('');
      o.out('  ZDS (ambpf run is the server, ztunnel the client):');
      for (const l of loaders) for (const line of describeZds(bed, l)) o.out(line);
      o.out('');
    }
    o.out(`  ambpf run is ready on ${loaders.map((l) => l.node.name).join(', ')}; iptables rules in the cluster: 0`);
    await startHttpServer(bed, 'app1-node1', 8080);
    await startHttpServer(bed, 'app1-node2', 8080);

    const cases = [
      { title: 'same node, mesh -> mesh', from: 'app2-node1', to: 'app1-node1', v6: false },
      { title: 'cross node, mesh -> mesh', from: 'app2-node1', to: 'app1-node2', v6: false },
      ...(mode === 'inpod'
        ? [{ title: 'cross node, mesh -> mesh over IPv6', from: 'app2-node1', to: 'app1-node2', v6: true }]
        : []),
      { title: 'non-mesh -> mesh (inbound plaintext)', from: 'client-node2', to: 'app1-node1', v6: false },
    ];
    for (const c of cases) {
      const pod = bed.pod(c.to);
      const target = { ip: (c.v6 ? pod.ips.find((a) => a.includes(':')) : undefined) ?? pod.ip };
      const mapsBefore = bed.info.nodes.map((n) => openPinnedMaps(n.bpffsDir));
      const before = mapsBefore.map((m) => m.stats());
      const logLen = bed.info.nodes.map((n) => bed.ztunnelLog(n.name).length);
      const r = await curl(bed, c.from, target.ip, 8080, { timeoutMs: 5000 });
      // The stand-in logs a connection when it ends: wait (bounded) until each hop of the path did.
      const hopsWanted = c.to === 'app1-node1' && c.from === 'client-node2' ? 1 : 2;
      for (
        let i = 0;
        i < 50 &&
        bed.info.nodes.reduce((n, node, j) => n + bed.ztunnelLog(node.name).length - logLen[j]!, 0) < hopsWanted;
        i++
      )
        await pause(50);
      const after = mapsBefore.map((m) => m.stats());
      mapsBefore.forEach((m) => m.close());
      o.out('');
      o.out(`  ${c.title}: curl ${c.from} -> ${c.to} (${c.v6 ? `[${target.ip}]` : target.ip}:8080)`);
      if (r.exitCode !== 0) throw new AmbpfError(`demo request failed: curl exit ${r.exitCode}: ${r.stderr.trim()}`);
      o.out(`    response: ${r.status} "${r.body.trim()}"`);
      const hops: Hop[] = bed.info.nodes.flatMap((n, i) =>
        bed
          .ztunnelLog(n.name)
          .slice(logLen[i])
          .map((entry) => ({ node: n.name, entry })),
      );
      // The stand-in logs a connection when it ends, so the inner hop ends first: order by the path.
      const rank = { outbound: 0, 'inbound-hbone': 1, 'inbound-plaintext': 1 } as const;
      hops.sort((a, b) => rank[a.entry.direction] - rank[b.entry.direction]);
      for (const h of hops) o.out(describeHop(h));
      bed.info.nodes.forEach((n, i) =>
        o.out(`    ${n.name.padEnd(6)} counters: ${counterDelta(before[i]!, after[i]!)}`),
      );
    }
    if (upstream) await dnsLookups(bed, upstream, o.out);
    if (mode === 'inpod') {
      const missing = cniStepAvailable();
      if (missing) o.out(`\n  (the CNI step is skipped: ${missing})`);
      else await demoCniPod(bed, loaders[0]!, podsFile, bed.pod('app1-node1'), o.out);
    }
    // What an operator would look at on node1: the ambient-pod map, joined with pod names.
    const pods = await bed.exec(
      'node1',
      [AMBPF_BIN, 'pods', '--bpffs', loaders[0]!.node.bpffsDir, '--state-file', loaders[0]!.stateFile],
      { check: false },
    );
    o.out('');
    o.out('  ambpf pods on node1:');
    for (const line of pods.stdout.trimEnd().split('\n')) o.out(`    ${line}`);
    o.out('');
    o.out(`ambpf demo: done in ${((Date.now() - started) / 1000).toFixed(1)} s; tearing down`);
    return 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
  }
}
