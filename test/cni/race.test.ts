// The race the CNI plugin closes (issue 17): pod sandboxes created one after another through the
// real chain (loopback, bridge + host-local from Debian's containernetworking-plugins, ambpf-cni),
// each running a process that connects to an outside address the moment its ADD returns. Every
// first connection must reach ztunnel (the ZDS stand-in), none may go direct. The connects run while
// the next sandbox is being created, as a node's pods do; the ADD loop has a time budget so that the
// file stays bounded on a busy machine (it says how many sandboxes it got through).
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Testbed, TestbedPod } from '../../src/testbed/index.ts';
import { curl, type CurlResult } from '../../src/testbed/helpers.ts';
import { DEBIAN_CNI_BIN, type ChainSandbox } from '../../src/cni/chain.ts';
import { editPodsFile, type Loader } from '../helpers/loader.ts';
import { eventually } from '../helpers/wait.ts';
import {
  PORT,
  cniChain,
  cniSpec,
  pendingPod,
  sandboxPod,
  startCniAgent,
  startCniTestbed,
  stopCniNode,
  type CniNode,
} from './env.ts';

const PODS = Number(process.env['AMBPF_CNI_RACE_PODS'] ?? 200);
/**
 * A bound on the ADD loop, not a speed claim: all PODS must be created within it (issue 17 asks for
 * 200). One sandbox takes ~190 ms at load 6 and ~600 ms with both cores busy, so 200 fit with room
 * inside tap's 300 s per file.
 */
const BUDGET_MS = Number(process.env['AMBPF_CNI_RACE_BUDGET_MS'] ?? 200_000);
const MIN_PODS = PODS;
const haveBridge = existsSync(join(DEBIAN_CNI_BIN, 'bridge'));

// The template of the sandboxes' TestbedPod (node, namespace); never created through the chain.
const spec = cniSpec([{ name: 'template', namespace: 'mesh', node: 'node1' }]);

let node: CniNode;
let tb: Testbed;
let loader: Loader;
const netnsMade: string[] = [];

interface Sandbox extends ChainSandbox {
  readonly pod: TestbedPod;
}

t.before(async () => {
  if (!haveBridge) return;
  node = await startCniTestbed(spec);
  tb = node.tb;
  tb.writePodsList(node.podsFile);
  loader = await startCniAgent(node, ['--cni-socket', node.socket, '--cni-timeout-ms', '10000']);
});
t.teardown(async () => {
  for (const name of netnsMade) {
    try {
      execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
    } catch {
      // already gone
    }
  }
  await stopCniNode(tb, loader);
});

t.test(`the race: up to ${PODS} sandboxes one after another, each connecting the moment ADD returns`, async (t) => {
  if (!haveBridge) {
    return t.plan(0, `skip: ${DEBIAN_CNI_BIN}/bridge missing: install containernetworking-plugins (make deps does)`);
  }
  const chain = cniChain(node);
  // The sandboxes' Pod objects exist before their sandboxes, as in Kubernetes: Pending, no IP.
  const boxes: Sandbox[] = Array.from({ length: PODS }, (_, i) => {
    const name = `race-${i}`;
    const uid = randomUUID();
    const netnsPath = `/run/netns/${tb.info.prefix}-${name}`;
    const pod = sandboxPod(tb, 'template', name, uid, netnsPath);
    return { name, uid, namespace: 'mesh', containerId: `${name}-sandbox`, netnsPath, pod };
  });
  editPodsFile(node.podsFile, (list) => {
    for (const b of boxes) list.items.push(pendingPod(b.name, b.uid) as (typeof list.items)[number]);
  });
  await eventually(() => loader.logLines().some((l) => l['msg'] === 'reconciled'), 10_000, 'a pass with the pods');

  const started = Date.now();
  const times: number[] = [];
  const ips = new Map<string, string>(); // sandbox -> IP
  const connects: Array<Promise<[string, CurlResult]>> = [];
  const failures: string[] = [];
  for (const b of boxes) {
    if (Date.now() - started > BUDGET_MS) break;
    const netnsName = `${tb.info.prefix}-${b.name}`;
    execFileSync('ip', ['netns', 'add', netnsName]);
    netnsMade.push(netnsName);
    mkdirSync(b.pod.containerCgroupPath, { recursive: true });
    const r = await chain.add(b);
    if (r.ours?.code !== 0 || !r.ip) {
      const ours = `${r.ours?.code} ${r.ours?.stdout.trim()}`;
      failures.push(`${b.name}: bridge ${r.bridge.code} ${r.bridge.stderr.trim()}; ambpf-cni ${ours}`);
      continue;
    }
    // The pod's first process, started the moment ADD returned: no wait, no retry.
    const pod = { ...b.pod, ip: r.ip, ips: [r.ip] };
    connects.push(curl(tb, pod, tb.pod('server').ip, PORT, { timeoutMs: 5000 }).then((c) => [b.name, c]));
    times.push(r.ours.ms);
    ips.set(b.name, r.ip);
  }
  const addLoopMs = Date.now() - started;
  const results = await Promise.all(connects);
  t.same(failures, [], 'every chain ADD succeeded');
  t.ok(
    times.length >= MIN_PODS,
    `${times.length} of ${PODS} sandboxes within the ${BUDGET_MS} ms budget (at least ${MIN_PODS})`,
  );
  const failed = results
    .filter(([, c]) => c.exitCode !== 0)
    .map(([name, c]) => `${name}: curl ${c.exitCode} ${c.stderr.trim()}`);
  t.same(failed, [], 'every first connection succeeded');
  // ztunnel logs a connection when it ends: each sandbox's IP as the source of an outbound leg.
  const viaZtunnel = (): Set<string> =>
    new Set(
      tb
        .ztunnelLog('node1')
        .filter((e) => e.direction === 'outbound')
        .map((e) => e.source.split(':')[0] ?? ''),
    );
  const missing = (): string[] => [...ips].filter(([, ip]) => !viaZtunnel().has(ip)).map(([name]) => name);
  await eventually(() => missing().length === 0, 10_000, 'ztunnel to log every connection').catch(() => undefined);
  t.same(missing(), [], 'every first connection reached ztunnel; none went direct');

  times.sort((a, b) => a - b);
  const q = (p: number): string => times[Math.min(times.length - 1, Math.floor(p * times.length))]!.toFixed(0);
  t.comment(
    `ADD of ambpf-cni after bridge, ${times.length} pods in ${(addLoopMs / 1000).toFixed(1)} s: ` +
      `median ${q(0.5)} ms, p99 ${q(0.99)} ms, max ${times.at(-1)!.toFixed(0)} ms`,
  );

  // Where the agent spent ADD's time (its log: decide, arm = a reconcile pass, ack = ZDS Add to ack),
  // and what its passes cost: ADD's pass queues behind the one a previous ack started.
  const logged = (msg: (m: string) => boolean): Array<Record<string, number>> =>
    loader
      .logLines()
      .filter((l) => msg(String(l['msg'])))
      .map((l) => l['phases'] as Record<string, number>);
  const median = (rows: Array<Record<string, number>>, k: string): string =>
    (rows.map((r) => r[k] ?? 0).sort((a, b) => a - b)[rows.length >> 1] ?? 0).toFixed(1);
  const adds = logged((m) => m.startsWith('CNI ADD: captured'));
  const passes = logged((m) => m === 'reconciled');
  t.comment(
    `agent side, median ms: decide ${median(adds, 'decide')}, arm ${median(adds, 'arm')}, ` +
      `ack ${median(adds, 'ack')}; ${passes.length} passes, median ms: resolve ${median(passes, 'resolve')}, ` +
      `apply ${median(passes, 'apply')}`,
  );

  // No DEL here: plugin.test.ts covers it; the teardown removes the sandboxes' netns and the node.
});
