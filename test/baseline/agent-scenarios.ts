// Istio's whole in-pod design on the testbed, for one backend: the baseline agent (istio-cni's role)
// installs the golden rules in every mesh pod and the probe SNAT on its node, and serves ZDS to the
// per-node ztunnel stand-in (ztunnel >= 1.23: listeners opened inside the pods it is handed, inbound
// legs spoofed from the client's address). Real curl, real HTTP servers, real DNS queries; the
// stand-in's connection log says which way each request went.
import type { Test } from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startTestbed, defaultSpec, type Testbed } from '../../src/testbed/index.ts';
import { curl, startHttpServer } from '../../src/testbed/helpers.ts';
import { editPodsFile } from '../../src/testbed/loader.ts';
import { startZtunnels, type ZtunnelHandle } from '../../src/testbed/ztunnel/launch.ts';
import { startBaselineAgent, startBaselineAgents, type BaselineAgentHandle } from '../../src/baseline/launch.ts';
import type { Backend } from '../../src/baseline/index.ts';
import { tracedCurl, logMark, linesSince } from '../helpers/standin.ts';
import { eventually } from '../helpers/wait.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { snapshot } from '../testbed/leak-check.ts';
import { netnsState } from './netns-state.ts';

const PORT = 8080;
/** An address nothing answers DNS on: only the redirect to ztunnel's 15053 can answer. */
const NO_RESOLVER = '198.18.0.1';

/** DNS A query from inside a pod, over UDP and TCP to NO_RESOLVER:53; prints the answers as JSON. */
const DNS_QUERY = `
import dgram from 'node:dgram'; import net from 'node:net'; import dnsPacket from 'dns-packet';
const [name, ms] = [process.argv[1], Number(process.argv[2] ?? 3000)];
const q = { type: 'query', id: 9, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name }] };
const udp = () => new Promise((res, rej) => { const s = dgram.createSocket('udp4'); const tm = setTimeout(() => { s.close(); rej(new Error('udp timeout')); }, ms);
  s.on('message', (m) => { clearTimeout(tm); s.close(); res(dnsPacket.decode(m)); }); s.send(dnsPacket.encode(q), 53, '${NO_RESOLVER}'); });
const tcp = () => new Promise((res, rej) => { const s = net.connect(53, '${NO_RESOLVER}'); s.setTimeout(ms, () => { s.destroy(); rej(new Error('tcp timeout')); });
  let b = Buffer.alloc(0); s.on('data', (d) => { b = Buffer.concat([b, d]); if (b.length >= 2 + b.readUInt16BE(0)) { s.end(); res(dnsPacket.streamDecode(b)); } });
  s.on('error', rej); s.write(dnsPacket.streamEncode(q)); });
const show = (p) => ({ rcode: p.rcode, aa: p.flag_aa, answers: p.answers.map((a) => a.data) });
console.log(JSON.stringify({ udp: show(await udp()), tcp: show(await tcp()) }));
`;

const ipOf = (hostPort: string | undefined): string => (hostPort ?? '').replace(/:\d+$/, '');

export async function runAgentScenarios(t: Test, backend: Backend): Promise<void> {
  const prefix = testPrefix();
  const before = await snapshot(prefix);
  const tb: Testbed = await startTestbed(defaultSpec(), { topology: 'inpod', prefix, standIn: false });
  t.teardown(() => tb.down());
  const ip = (pod: string): string => tb.pod(pod).ip;
  const mesh = tb.pods.filter((p) => p.mesh);
  const meshOn = (node: string): number => mesh.filter((p) => p.node === node).length;
  const touched = [...tb.nodes.map((n) => n.netnsPath), ...mesh.map((p) => p.netnsPath)];
  const statesBefore = await Promise.all(touched.map((ns) => netnsState(ns)));

  const podsFile = join(tb.info.runDir, 'pods.json');
  tb.writePodsList(podsFile);
  const zdsSocket = (node: string): string => join(tb.info.runDir, `zds-${node}.sock`);
  const agents: BaselineAgentHandle[] = await startBaselineAgents(tb, { backend, podsFile, zdsSocket });
  t.teardown(async () => {
    for (const a of agents) await a.stop();
  });
  const agentOf = (node: string): BaselineAgentHandle =>
    agents.find((a) => a.node.name === node) as BaselineAgentHandle;
  const zts: ZtunnelHandle[] = await startZtunnels(tb, { zdsSocket });
  // Before the first subtest: tap ends the file's root test once it is idle between subtests.
  for (const p of ['app2-node1', 'app1-node2', 'client-node2']) await startHttpServer(tb, p, PORT);
  const captured =
    (node: string, n = meshOn(node)) =>
    (s: NonNullable<ReturnType<BaselineAgentHandle['state']>>): boolean =>
      s.ready && s.zds.ready && s.pods.length === n && s.pods.every((p) => p.zds === 'acked' && p.probe);

  await t.test("every mesh pod: rules in, taken by its node's ztunnel over ZDS, in the probe set", async (t) => {
    for (const a of agents) {
      const s = await a.waitFor(
        captured(a.node.name),
        'every mesh pod captured, acked by ztunnel and in the probe set',
      );
      t.same(
        s.pods.map((p) => p.name).sort(),
        mesh
          .filter((p) => p.node === a.node.name)
          .map((p) => p.name)
          .sort(),
        `${a.node.name}: its mesh pods`,
      );
      t.equal(s.zds.peers.length, 1, `${a.node.name}: one ztunnel connected`);
    }
    for (const z of zts) {
      const s = await z
        .waitFor((x) => x.ready && x.workloads.length === meshOn(z.node), "ready with the node's pods")
        .catch((err: unknown) => {
          t.comment(
            `--- ${z.outPath} (last 30 lines)\n${readFileSync(z.outPath, 'utf8').trim().split('\n').slice(-30).join('\n')}`,
          );
          throw err;
        });
      t.equal(s.workloads.length, meshOn(z.node), `${z.node}: the stand-in serves ${meshOn(z.node)} pods`);
    }
  });

  await t.test(
    "outbound: the pod's connection to a non-mesh pod goes through ztunnel, which reads SO_ORIGINAL_DST",
    async (t) => {
      const r = await tracedCurl(tb, 'app1-node1', ip('client-node2'), PORT, ['node1'], { node1: ['outbound'] });
      t.equal(
        r.body,
        `hello from client-node2 peer=${ip('app1-node1')} path=/\n`,
        "the upstream leaves from the pod's own IP",
      );
      const out = r.lines['node1']?.find((l) => l.direction === 'outbound');
      t.match(out, {
        originalDst: `${ip('client-node2')}:${PORT}`,
        dstFrom: 'SO_ORIGINAL_DST',
        upstreamProtocol: 'tcp',
        result: 'ok',
      });
      t.equal(ipOf(out?.source), ip('app1-node1'), 'source = the client pod');
    },
  );

  await t.test("mesh -> mesh across nodes: HBONE, and the app sees the client pod's address", async (t) => {
    const r = await tracedCurl(tb, 'app1-node1', ip('app1-node2'), PORT, ['node1', 'node2'], {
      node1: ['outbound'],
      node2: ['inbound-hbone'],
    });
    t.equal(r.body, `hello from app1-node2 peer=${ip('app1-node1')} path=/\n`, 'spoofed inbound leg');
    t.match(
      r.lines['node1']?.find((l) => l.direction === 'outbound'),
      { dstFrom: 'SO_ORIGINAL_DST', upstream: `${ip('app1-node2')}:15008`, upstreamProtocol: 'hbone', result: 'ok' },
    );
    t.match(
      r.lines['node2']?.find((l) => l.direction === 'inbound-hbone'),
      { originalDst: `${ip('app1-node2')}:${PORT}`, result: 'ok' },
    );
  });

  await t.test(
    "inbound plaintext: captured to 15006, and the app sees the client's address (connmark 0x111 return path)",
    async (t) => {
      const r = await tracedCurl(tb, 'client-node1', ip('app1-node2'), PORT, ['node1', 'node2'], {
        node2: ['inbound-plaintext'],
      });
      t.equal(
        r.body,
        `hello from app1-node2 peer=${ip('client-node1')} path=/\n`,
        "the app's peer is the non-mesh client",
      );
      const inb = r.lines['node2']?.find((l) => l.direction === 'inbound-plaintext');
      t.match(inb, { originalDst: `${ip('app1-node2')}:${PORT}`, dstFrom: 'SO_ORIGINAL_DST', result: 'ok' });
      t.equal(ipOf(inb?.upstreamLocal), ip('client-node1'), "ztunnel's leg to the app is bound to the client IP");
      t.same(r.lines['node1'], [], "no capture on the client's node");
    },
  );

  await t.test("DNS over UDP and TCP to port 53 anywhere is answered by ztunnel's proxy on 15053", async (t) => {
    const r = await tb.exec(
      'app1-node1',
      [process.execPath, '--input-type=module', '-e', DNS_QUERY, 'client-node2.plain.svc.cluster.local'],
      { timeoutMs: 15_000 },
    );
    const got = JSON.parse(r.stdout) as Record<'udp' | 'tcp', { rcode: string; aa: boolean; answers: string[] }>;
    for (const proto of ['udp', 'tcp'] as const)
      t.same(
        got[proto],
        { rcode: 'NOERROR', aa: true, answers: [ip('client-node2')] },
        `${proto}: the stand-in's zone answer`,
      );
    // Without the rules nothing listens on ${NO_RESOLVER}:53: the same query from a non-mesh pod fails.
    const plain = await tb.exec(
      'client-node1',
      [process.execPath, '--input-type=module', '-e', DNS_QUERY, 'client-node2.plain.svc.cluster.local', '1000'],
      { timeoutMs: 15_000, check: false },
    );
    t.not(plain.code, 0, 'a non-mesh pod has no DNS proxy');
  });

  await t.test('a kubelet-like probe from the node reaches the app directly, from 169.254.7.127', async (t) => {
    const mark = logMark(tb, ['node1']);
    const r = await curl(tb, 'node1', ip('app2-node1'), PORT);
    t.equal(r.body, `hello from app2-node1 peer=169.254.7.127 path=/\n`, r.stderr);
    t.same((await linesSince(tb, mark))['node1'], [], 'ztunnel saw nothing');
  });

  await t.test('a pod to its own IP stays inside it (lo), not captured', async (t) => {
    const r = await tracedCurl(tb, 'app2-node1', ip('app2-node1'), PORT, ['node1']);
    t.equal(r.body, `hello from app2-node1 peer=${ip('app2-node1')} path=/\n`);
    t.same(r.lines['node1'], [], 'ztunnel saw nothing');
  });

  await t.test("ztunnel's own connections (marked 0x539) are never captured again", async (t) => {
    const lines = tb.nodes.flatMap((n) => tb.ztunnelLog(n.name));
    t.ok(lines.length >= 4, `${lines.length} connections logged so far`);
    for (const l of lines) {
      t.notOk(
        [15001, 15006, 15008].includes(Number(l.originalDst.split(':').pop())),
        `${l.direction} to ${l.originalDst} is not to a ztunnel port`,
      );
    }
  });

  await t.test(
    "a pod leaving the mesh: probe entry, rules and ztunnel's proxy go; coming back: all return",
    async (t) => {
      const leaving = tb.pod('app2-node1');
      const i = touched.indexOf(leaving.netnsPath);
      const setLabel = (value: string | undefined): void =>
        editPodsFile(podsFile, (list) => {
          const item = list.items.find((x) => x.kind === 'Pod' && x.metadata.name === leaving.name);
          if (!item) throw new Error(`${leaving.name} is not in the pods file`);
          const labels = { ...item.metadata.labels };
          if (value === undefined) delete labels['istio.io/dataplane-mode'];
          else labels['istio.io/dataplane-mode'] = value;
          item.metadata.labels = labels;
        });
      setLabel('none');
      await agentOf('node1').waitFor(
        (s) => s.ready && !s.pods.some((p) => p.uid === leaving.uid),
        `${leaving.name} released`,
      );
      const z1 = zts.find((z) => z.node === 'node1') as ZtunnelHandle;
      await z1.waitFor((s) => !s.workloads.some((w) => w.uid === leaving.uid), `ztunnel dropped ${leaving.name} (Del)`);
      t.same(await netnsState(leaving.netnsPath), statesBefore[i], 'its netns is as before the agent');
      const direct = await tracedCurl(tb, 'client-node1', leaving.ip, PORT, ['node1']);
      t.same(direct.lines['node1'], [], 'traffic to it is direct');
      const probe = await curl(tb, 'node1', leaving.ip, PORT);
      t.equal(
        probe.body,
        `hello from app2-node1 peer=${tb.node('node1').wireIp} path=/\n`,
        'no probe SNAT for a pod outside the mesh',
      );

      setLabel(undefined);
      await agentOf('node1').waitFor(captured('node1'), `${leaving.name} captured again`);
      await z1.waitFor(
        (s) => s.workloads.some((w) => w.uid === leaving.uid),
        `ztunnel took ${leaving.name} again (Add)`,
      );
      const back = await tracedCurl(tb, 'client-node1', leaving.ip, PORT, ['node1'], { node1: ['inbound-plaintext'] });
      t.equal(back.body, `hello from app2-node1 peer=${ip('client-node1')} path=/\n`, 'captured again, spoofed');
      const again = await eventually(
        async () => (await curl(tb, 'node1', leaving.ip, PORT)).body,
        5000,
        'the probe reply',
      );
      t.equal(again, `hello from app2-node1 peer=169.254.7.127 path=/\n`, 'probe SNAT again');
    },
  );

  await t.test(
    'an agent killed with its rules in: the next adopts them exactly once, ztunnel takes its snapshot',
    async (t) => {
      const i = agents.findIndex((a) => a.node.name === 'node1');
      const old = agents[i] as BaselineAgentHandle;
      const node1 = [tb.node('node1').netnsPath, ...mesh.filter((p) => p.node === 'node1').map((p) => p.netnsPath)];
      const running = await Promise.all(node1.map((ns) => netnsState(ns)));
      old.process.kill('SIGKILL');
      await old.process.exited;
      const z1 = zts.find((z) => z.node === 'node1') as ZtunnelHandle;
      await z1.waitFor((s) => !s.connected, 'ztunnel saw its agent go');
      const next = startBaselineAgent(tb, tb.node('node1'), { backend, podsFile, zdsSocket });
      agents[i] = next;
      await next.waitFor(captured('node1'), 'the new agent captured every pod again');
      await z1.waitFor(
        (s) => s.connected && s.ready && s.workloads.length === meshOn('node1'),
        'ztunnel reconnected and took the new snapshot',
      );
      const adopted = await Promise.all(node1.map((ns) => netnsState(ns)));
      for (const [j, ns] of node1.entries())
        t.same(adopted[j], running[j], `${ns}: the same rules and sets, each once`);
      const r = await tracedCurl(tb, 'client-node1', ip('app2-node1'), PORT, ['node1'], {
        node1: ['inbound-plaintext'],
      });
      t.equal(r.body, `hello from app2-node1 peer=${ip('client-node1')} path=/\n`, 'still captured and spoofed');
    },
  );

  await t.test('stopping the agent removes every rule it installed, in every netns', async (t) => {
    for (const a of agents) t.equal(await a.stop(), 0, `${a.node.name}: agent exited 0`);
    const after = await Promise.all(touched.map((ns) => netnsState(ns)));
    for (const [i, ns] of touched.entries()) t.same(after[i], statesBefore[i], `${ns} as before`);
    await tb.down();
    t.same(await snapshot(prefix), before, 'netns, cgroups, root iptables-save, bpffs, ipsets as before');
  });
}
