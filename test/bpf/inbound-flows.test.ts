// Inbound flow state of the node-topology tc program (review issue 4). It used to remember every
// inbound SYN in an LRU, so 65,536 newer flows evicted an idle long-lived connection, whose next
// packet then went straight to the pod and got a RST. Now inbound TCP is steered without state and
// only the replies to connections the pod itself opened pass (ambpf_outflow, kept by sockops).
// Real sockets for the connections; the 70,000 flows (SYN + ACK) are crafted and run through BPF_PROG_TEST_RUN.
import t from 'tap';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BpfObject, ifIndex, withNetns } from '../../src/libbpf/index.ts';
import { ensureObjects } from '../../src/bpf/build.ts';
import { jsonLines, makeEnv, openNodeInbound, waitUntil } from './env.ts';
import { ACK, RST, SYN, TC_ACT_OK, TC_ACT_REDIRECT, skbCtx, tcpPacket } from './packets.ts';

const FLOODING_FLOWS = 70_000;

interface Line {
  paused?: boolean;
  hello?: { port: number } | null;
  sha?: string;
  sha_local?: string;
  error?: string;
}

t.test('inbound steering keeps no per-flow state an attacker can fill', { timeout: 120_000 }, async (t) => {
  const env = await makeEnv(t);
  const { b, c } = env.pods;
  const { dp } = await openNodeInbound(t, env);
  const cHostIfindex = withNetns(env.node, () => ifIndex(c.hostIf));
  dp.attachInbound(b.hostIf);
  await env.server('c', ['9000']);

  // The tc program on its own, in the node's netns (ifindexes there; a RST's clone goes to ztunnel's
  // veth in that netns, never anywhere else), with the very maps the datapath uses.
  const { objects } = await ensureObjects();
  const obj = BpfObject.open(objects['ambpf_inbound'] ?? '');
  t.teardown(() => obj.close());
  obj.setPinDir(env.bpffs);
  obj.program('ambpf_sk_lookup').setAutoload(false);
  obj.load();
  const tc = obj.program('ambpf_tc_pod');
  const fromC = skbCtx(cHostIfindex);
  const run = (data: Uint8Array): number => withNetns(env.node, () => tc.testRun({ data, ctx: fromC }).retval);

  await t.test(`an idle inbound connection survives ${FLOODING_FLOWS} other flows`, async (t) => {
    const go = join('/tmp', `${env.prefix}-go`);
    t.teardown(() => rmSync(go, { force: true }));
    const client = env.pausedClient('c', b.ip, 8080, go, 4096);
    const lines = jsonLines<Line>(client);
    t.ok(await waitUntil(() => lines.some((l) => l.paused), 10_000), 'the client is connected and idle');

    let steered = 0;
    for (let i = 0; i < FLOODING_FLOWS; i++) {
      const src = `198.18.${100 + (i >> 16)}.${(i >> 8) & 0xff}`;
      const sport = 1024 + (i & 0xff) * 200 + 1;
      // SYN then ACK, like a real flow: a flow that is looked up again is what an LRU keeps longest.
      if (
        run(tcpPacket(src, b.ip, sport, 8080, SYN)) === TC_ACT_REDIRECT &&
        run(tcpPacket(src, b.ip, sport, 8080, ACK)) === TC_ACT_REDIRECT
      )
        steered++;
    }
    t.equal(steered, FLOODING_FLOWS, 'every crafted flow was steered');

    writeFileSync(go, '');
    const code = await client.exited;
    const out = lines.find((l) => l.sha !== undefined || l.error !== undefined);
    t.equal(code, 0, 'the client finished');
    t.equal(out?.hello?.port, 15006, "the connection was ztunnel's from the start");
    t.ok(
      out?.sha && out.sha === out.sha_local,
      `the idle connection still reaches ztunnel afterwards (${JSON.stringify(out)})`,
    );
  });

  await t.test("replies to the pod's own connections pass; the rest of inbound is steered", async (t) => {
    const before = dp.stats();
    // A real outbound connection from the pod: sockops records it, its replies come back untouched.
    const raw = (await env.client('b', [c.ip, '9000'])) as Line[];
    t.equal(raw[0]?.hello?.port, 9000, "the pod's own connection got its answer");
    t.ok(dp.stats().tc_pass_pod_flow > before.tc_pass_pod_flow, "its replies passed as the pod's own flow");
    t.equal(dp.maps.outflow.keys().length, 0, 'its entry is gone once it closed');

    dp.maps.outflow.set({ saddr: c.ip, daddr: b.ip, sport: 9000, dport: 40100 }, 1n);
    t.equal(run(tcpPacket(c.ip, b.ip, 9000, 40100, ACK)), TC_ACT_OK, 'a packet of a flow the pod opened passes');
    dp.maps.outflow.delete({ saddr: c.ip, daddr: b.ip, sport: 9000, dport: 40100 });
    t.equal(
      run(tcpPacket(c.ip, b.ip, 9000, 40101, SYN | ACK)),
      TC_ACT_OK,
      "a SYN-ACK (the answer to the pod's SYN) passes",
    );
    t.equal(
      run(tcpPacket(c.ip, b.ip, 40102, 8080, ACK)),
      TC_ACT_REDIRECT,
      'any other inbound packet is steered, SYN seen or not',
    );
    // A refused connect of the pod's own: the peer's RST must reach it (stolen, the client would
    // retry its SYN until its 10 s timeout and report "timed out").
    const [refused] = (await env.client('b', [c.ip, '9999'])) as Line[];
    t.match(refused?.error, /refused/i, `the pod's connect to a closed port is refused (${JSON.stringify(refused)})`);
    const rsts = dp.stats().tc_rst_cloned;
    t.equal(
      run(tcpPacket(c.ip, b.ip, 9000, 40103, RST | ACK)),
      TC_ACT_OK,
      'an unknown RST reaches the pod (a refused connect of its own)...',
    );
    t.equal(dp.stats().tc_rst_cloned - rsts, 1n, '...and a copy goes to ztunnel (an inbound connection reset)');
  });
});
