// Inbound steering (node topology) on the real kernel: tc egress on the pod's host veth + sk_lookup
// in ztunnel's netns. A non-mesh client's connection to a mesh pod lands on ztunnel's 15006 (or
// 15008 for dport 15008) with the pod's address as the socket's local address; replies return; the
// pod's own outbound connections are not stolen. Plus BPF_PROG_TEST_RUN of the tc program with
// crafted packets.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { BpfLink, BpfObject, ifIndex, linkInfoByFd, listIds, withFdById, withNetns } from '../../src/libbpf/index.ts';
import { ensureObjects } from '../../src/bpf/build.ts';
import * as s from '../../src/bpf/schema.ts';
import { makeEnv, openNodeInboundMaps, type Addr } from './env.ts';
import { ACK, SYN, TC_ACT_OK, TC_ACT_REDIRECT, skbCtx, tcpPacket } from './packets.ts';

/** The old object form of tcpPacket, kept for readability of the checks below. */
const packet = (o: { src: string; dst: string; sport: number; dport: number; flags: number }): Uint8Array =>
  tcpPacket(o.src, o.dst, o.sport, o.dport, o.flags);

interface ClientOut {
  peername: Addr;
  hello: { port: number; local: Addr; peer: Addr } | null;
  error?: string;
}

t.test('inbound steering in a netns + cgroup of our own', { timeout: 200_000 }, async (t) => {
  const env = await makeEnv(t);
  const { b, c, z } = env.pods;
  const { dp, ztHostIfindex } = await openNodeInboundMaps(t, env);
  const bHostIfindex = withNetns(env.node, () => ifIndex(b.hostIf));

  await t.test('tc program on crafted packets (BPF_PROG_TEST_RUN)', async (t) => {
    const { objects } = await ensureObjects();
    const path = objects['ambpf_inbound'];
    if (!path) throw new Error('ambpf_inbound was not built');
    const obj = BpfObject.open(path);
    t.teardown(() => obj.close());
    obj.setPinDir(env.bpffs); // the very maps the datapath filled
    obj.program('ambpf_sk_lookup').setAutoload(false);
    obj.load();
    const prog0 = obj.program('ambpf_tc_pod');
    // Forwarded from the non-mesh peer's veth, as the node would see it.
    const fromC = skbCtx(withNetns(env.node, () => ifIndex(c.hostIf)));
    // In the node's netns: the ifindexes the program acts on are that netns's.
    const prog = {
      testRun: (o: { data: Uint8Array; ctx?: Uint8Array }) =>
        withNetns(env.node, () => prog0.testRun({ ctx: fromC, ...o })),
    };
    const syn = prog.testRun({ data: packet({ src: c.ip, dst: b.ip, sport: 40001, dport: 8080, flags: SYN }) });
    t.equal(syn.retval, TC_ACT_REDIRECT, 'a SYN from a non-mesh client to a mesh pod is redirected');
    t.equal(
      Buffer.from(syn.dataOut.subarray(0, 6)).toString('hex'),
      z.mac.replaceAll(':', ''),
      'dst MAC = ztunnel eth0',
    );
    t.equal(
      Buffer.from(syn.dataOut.subarray(6, 12)).toString('hex'),
      z.hostMac.replaceAll(':', ''),
      'src MAC = ztunnel host veth',
    );
    const ack = prog.testRun({ data: packet({ src: c.ip, dst: b.ip, sport: 40001, dport: 8080, flags: ACK }) });
    t.equal(ack.retval, TC_ACT_REDIRECT, 'later packets of that flow follow (stateless: no flow table)');
    const stray = prog.testRun({ data: packet({ src: c.ip, dst: b.ip, sport: 40002, dport: 8080, flags: SYN | ACK }) });
    t.equal(stray.retval, TC_ACT_OK, "a reply to the pod's own connection (no SYN seen) passes");
    const fromZt = prog.testRun({ data: packet({ src: z.ip, dst: b.ip, sport: 40003, dport: 15008, flags: SYN }) });
    t.equal(fromZt.retval, TC_ACT_OK, "ztunnel's own traffic to the pod passes");
    const spoofed = prog.testRun({
      data: packet({ src: c.ip, dst: b.ip, sport: 40006, dport: 8080, flags: SYN }),
      ctx: skbCtx(ztHostIfindex),
    });
    t.equal(spoofed.retval, TC_ACT_OK, "ztunnel's upstream with the client's address (from ztunnel's veth) passes");
    const local = prog.testRun({
      data: packet({ src: '198.18.3.1', dst: b.ip, sport: 40007, dport: 8080, flags: SYN }),
      ctx: skbCtx(0),
    });
    t.equal(local.retval, TC_ACT_OK, 'a packet the node made itself (no ingress interface) passes');
    const probe = prog.testRun({ data: packet({ src: s.PROBE_IP, dst: b.ip, sport: 40004, dport: 8080, flags: SYN }) });
    t.equal(probe.retval, TC_ACT_OK, 'kubelet probes (169.254.7.127) pass');
    const other = prog.testRun({
      data: packet({ src: c.ip, dst: '198.18.9.9', sport: 40005, dport: 8080, flags: SYN }),
    });
    t.equal(other.retval, TC_ACT_OK, 'a destination not in ambpf_pods passes');
    const arp = Buffer.alloc(42);
    arp.writeUInt16BE(0x0806, 12);
    t.equal(prog.testRun({ data: new Uint8Array(arp) }).retval, TC_ACT_OK, 'non-IP passes');
    t.equal(prog.testRun({ data: new Uint8Array(14) }).retval, TC_ACT_OK, 'a bare Ethernet header passes');
  });

  const standIn = await env.server('z', ['15006,15008', '--transparent']);
  t.equal(
    await dp.attachZtunnel({ netnsPath: z.netns, pid: standIn.pid, hostIfname: z.hostIf }),
    'created',
    'sk_lookup link created',
  );
  t.equal(dp.attachInbound(b.hostIf), 'created', 'tc link created on the pod veth');
  await env.server('c', ['9000']);

  const connect = async (from: 'b' | 'c', ip: string, port: number): Promise<ClientOut> => {
    const [out] = (await env.client(from, [ip, String(port)])) as ClientOut[];
    if (!out || out.error || !out.hello) throw new Error(`client failed: ${JSON.stringify(out)}`);
    return out;
  };

  await t.test('a non-mesh client reaches ztunnel with the pod IP as local address', async (t) => {
    const before = dp.stats();
    const plain = await connect('c', b.ip, 8080);
    t.equal(plain.hello?.port, 15006, 'assigned to the 15006 listener');
    t.same(
      plain.hello?.local,
      { ip: b.ip, port: 8080 },
      "the accepted socket's local address is the original destination",
    );
    t.equal(plain.hello?.peer.ip, c.ip, "ztunnel sees the client's IP");
    const hbone = await connect('c', b.ip, 15008);
    t.equal(hbone.hello?.port, 15008, 'dport 15008 is assigned to the 15008 listener');
    t.same(hbone.hello?.local, { ip: b.ip, port: 15008 });
    const after = dp.stats();
    t.ok(after.tc_steered > before.tc_steered, 'tc_steered moved');
    t.equal(after.sklookup_assigned - before.sklookup_assigned, 2n, 'sk_lookup assigned both connections');
  });

  await t.test("the mesh pod's own outbound connections get their replies", async (t) => {
    const before = dp.stats();
    const out = await connect('b', c.ip, 9000);
    t.equal(out.hello?.port, 9000, 'reached the real server and got its answer back');
    t.ok(dp.stats().tc_pass_pod_flow > before.tc_pass_pod_flow, "replies passed as the pod's own flow");
  });

  await t.test('a restart adopts the inbound links; detach removes them', async (t) => {
    t.equal(dp.attachInbound(b.hostIf), 'adopted');
    t.equal(await dp.attachZtunnel({ netnsPath: z.netns, pid: standIn.pid }), 'adopted');
    // bpftool 7.1 does not list tcx links under `net show`: count them from link info instead
    // (ifindex alone is not enough: other netns on this machine have the same ifindexes).
    const pinned = BpfLink.openPinned(`${env.bpffs}/links/tc-${b.hostIf}`);
    const progId = pinned.info().progId;
    pinned.close();
    const onVeth = listIds('link').filter((id) => {
      try {
        const info = withFdById('link', id, linkInfoByFd);
        return info.ifindex === bHostIfindex && info.progId === progId;
      } catch {
        return false; // gone meanwhile
      }
    });
    t.equal(onVeth.length, 1, 'one tc link of ours on the veth after the second attach');
    t.ok(dp.detachInbound(b.hostIf), 'detached');
    const direct = await connect('c', b.ip, 8080).catch((e: Error) => e);
    t.ok(direct instanceof Error, 'without steering nothing answers on the pod itself');
    await dp.detachZtunnel({ netnsPath: z.netns });
    const rules = execFileSync('ip', ['-n', z.netns.split('/').pop() ?? '', 'rule', 'show'], { encoding: 'utf8' });
    t.notMatch(rules, /lookup 100/, 'policy rule removed');
  });
});
