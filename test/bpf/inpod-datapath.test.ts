// The inpod datapath on the real kernel, in netns + cgroups of our own: a "ztunnel" (the python
// helper server on 15001/15006/15008) runs inside each mesh pod's netns, as ztunnel does since
// Istio 1.21. Outbound lands on 127.0.0.1:15001 in the pod with SO_ORIGINAL_DST and getpeername
// giving the original; inbound from a non-mesh peer lands on the pod's 15006 (15008 for HBONE) with
// the pod's address as local address; ztunnel's own sockets and the loop trap are left alone; two
// pods hammering the same loopback tuples at once never get each other's destination.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { statSync } from 'node:fs';
import * as s from '../../src/bpf/schema.ts';
import { makeEnv, HELPER, openInpod, captureInpod, type Addr, type Hello } from './env.ts';
import { ERRNO } from '../../src/errors.ts';

interface ClientOut {
  peername: Addr;
  sockname?: Addr;
  hello: Hello | null;
  error?: string;
}
interface VaryOut {
  done: number;
  wrong: number;
  errors: number;
  distinct_ports: number;
  examples: unknown[];
}

const APP = 8080;

t.test('inpod datapath in netns + cgroups of our own', { timeout: 200_000 }, async (t) => {
  const env = await makeEnv(t);
  const { a, b, c } = env.pods;
  const dp = await openInpod(t, env);

  // ztunnel's listeners inside the mesh pods a and b (dual-stack, like the stand-in and ztunnel).
  const ztA = await env.server('a', ['15001,15006,15008', '--v6']);
  const ztB = await env.server('b', ['15001,15006,15008', '--v6']);
  await env.server('b', [String(APP)]);
  await env.server('c', ['9000,9001']);
  const cookieA = captureInpod(env, dp, 'a', ztA);
  const cookieB = captureInpod(env, dp, 'b', ztB);
  t.not(cookieA, cookieB);

  await t.test(
    'outbound lands on <pod IP>:15001 in the pod; SO_ORIGINAL_DST and getpeername give the original',
    async (t) => {
      const [r] = (await env.client('a', [b.ip, String(APP)])) as ClientOut[];
      t.equal(r?.hello?.port, 15001, 'accepted by the 15001 listener inside pod a');
      t.same(r?.hello?.local, { ip: a.ip, port: 15001 }, "to the pod's own IP, as Istio's REDIRECT");
      t.equal(r?.hello?.peer.ip, a.ip, "the source ztunnel sees is the pod's IP");
      t.same(r?.hello?.orig, { ip: b.ip, port: APP }, 'SO_ORIGINAL_DST answers the original destination');
      t.same(r?.peername, { ip: b.ip, port: APP }, "the app's getpeername shows the original destination");
      t.ok(dp.stats().getsockopt_answered > 0n);
    },
  );

  await t.test("a getsockopt bigger than a page gets the kernel's answer, not EFAULT", async (t) => {
    const [r] = (await env.helper('a', ['bigopt'])) as Array<{ ok?: true; errno?: number }>;
    t.ok(r?.ok === true || r?.errno === ERRNO.ENOPROTOOPT, `SO_PEERSEC with a 16 KiB buffer: ${JSON.stringify(r)}`);
  });

  await t.test('a v4-mapped destination through a dual-stack client socket', async (t) => {
    const [r] = (await env.client('a', [`::ffff:${c.ip}`, '9000'])) as ClientOut[];
    t.equal(r?.hello?.port, 15001);
    t.same(r?.hello?.orig, { ip: c.ip, port: 9000 });
    t.same(r?.peername, { ip: c.ip, port: 9000 });
  });

  await t.test('an app bound to a loopback address first still reaches 15001, not 15006', async (t) => {
    // Its connect is sent to the pod's own IP:15001 from 127.0.0.5: sk_lookup must leave a loopback
    // source alone (only the netns itself can send one), as it does the pod's own address.
    const [r] = (await env.client('a', [c.ip, '9000', '--bind', '127.0.0.5'])) as ClientOut[];
    t.equal(r?.hello?.port, 15001, "ztunnel's outbound listener");
    t.same(r?.hello?.orig, { ip: c.ip, port: 9000 }, 'with the original destination');
  });

  await t.test("inbound from a non-mesh peer goes to the pod's 15006, HBONE to its 15008", async (t) => {
    const [plain] = (await env.client('c', [b.ip, String(APP)])) as ClientOut[];
    t.equal(plain?.hello?.port, 15006, "assigned to ztunnel's 15006 inside pod b");
    t.same(plain?.hello?.local, { ip: b.ip, port: APP }, 'the local address is the original destination');
    t.equal(plain?.hello?.peer.ip, c.ip, 'the source is the client');
    const [hbone] = (await env.client('c', [b.ip, '15008'])) as ClientOut[];
    t.equal(hbone?.hello?.port, 15008);
    t.ok(dp.stats().sklookup_assigned >= 2n);
  });

  await t.test(
    "a connection the node itself opens (kubelet's probe) reaches the app; forwarded ones do not",
    async (t) => {
      const before = dp.stats();
      const out = execFileSync('nsenter', [`--net=${env.node}`, 'python3', HELPER, 'client', b.ip, String(APP)], {
        encoding: 'utf8',
      });
      const [probe] = out
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as ClientOut);
      t.equal(probe?.hello?.port, APP, 'from the node netns: straight to the app, no host SNAT rule needed');
      t.ok(dp.stats().sklookup_pass_probe > before.sklookup_pass_probe, 'counted as a probe');
      const [fwd] = (await env.client('c', [b.ip, String(APP)])) as ClientOut[];
      t.equal(fwd?.hello?.port, 15006, 'forwarded by the node (pod c): to ztunnel');
    },
  );

  await t.test("ztunnel's marked sockets and the pod's own IP are not redirected", async (t) => {
    const [marked] = (await env.client('a', [c.ip, '9000', '--mark', String(s.ZTUNNEL_MARK)])) as ClientOut[];
    t.equal(marked?.hello?.port, 9000, 'a marked connect goes where it asked');
    // ztunnel's upstream to the pod's own IP (local == remote): the loop trap must not steer it.
    const [own] = (await env.client('b', [b.ip, String(APP), '--mark', String(s.ZTUNNEL_MARK)])) as ClientOut[];
    t.equal(own?.hello?.port, APP, 'reaches the app, not 15006');
    const [self] = (await env.client('b', [b.ip, String(APP)])) as ClientOut[];
    t.equal(self?.hello?.port, APP, 'the app calling its own IP is not redirected either');
  });

  await t.test("ztunnel's spoofed leg (bound to the client's IP) reaches the app and gets its replies", async (t) => {
    const before = dp.stats();
    // ztunnel's inbound leg: mark 0x539, IP_TRANSPARENT, bound to the original client's address.
    const [r] = (await env.client('b', [
      b.ip,
      String(APP),
      '--mark',
      String(s.ZTUNNEL_MARK),
      '--transparent',
      '--bind',
      c.ip,
    ])) as ClientOut[];
    t.equal(r?.hello?.port, APP, 'the app accepted it (not steered back into 15006)');
    t.equal(r?.hello?.peer.ip, c.ip, "the app sees the client's address");
    t.same(r?.sockname?.ip, c.ip, "the leg really was bound to the client's address");
    const after = dp.stats();
    t.ok(after.orig_src_marked > before.orig_src_marked, 'connect4 recorded and marked the leg');
    t.ok(after.sklookup_pass_ztunnel > before.sklookup_pass_ztunnel, 'sk_lookup let it through');
    // The entry stays for the leg's SYN retransmits (INPOD_LEG_WINDOW); once established, its own
    // socket holds the tuple. The value is when connect4 recorded it (~1 ms units).
    const legs = [...dp.inpodMaps.origsrc.keys()];
    t.equal(legs.length, 1, 'one entry, for this leg');
    t.ok(new DataView(dp.inpodMaps.origsrc.lookup(legs[0]!)!.buffer).getUint32(0, true) > 0, 'stamped');
  });

  await t.test('an armed pod without ztunnel listeners refuses both ways (fail closed)', async (t) => {
    const cookieC = captureInpod(env, dp, 'c');
    try {
      const before = dp.stats();
      const [out] = (await env.client('c', [b.ip, String(APP)])) as Array<ClientOut & { error?: string }>;
      t.match(out?.error ?? '', /refused/i, 'outbound: refused, not sent direct');
      const [inb] = (await env.client('z', [c.ip, '9000'])) as Array<ClientOut & { error?: string }>;
      t.match(inb?.error ?? '', /refused/i, 'inbound: RST, not handed to the app');
      t.ok(dp.stats().sklookup_refused > before.sklookup_refused, 'counted as refused');
      const rules = execFileSync('nsenter', [`--net=${c.netns}`, 'ip', 'rule', 'show'], { encoding: 'utf8' });
      t.match(rules, /fwmark 0x1000\/0x1000 lookup 41919/, 'the return route of spoofed legs is in place');
    } finally {
      dp.maps.pods.delete(c.ip);
      dp.maps.netns.delete(cookieC);
      t.ok(dp.detachPod(cookieC, [c.ip], c.netns), 'released');
    }
    const rules = execFileSync('nsenter', [`--net=${c.netns}`, 'ip', 'rule', 'show'], { encoding: 'utf8' });
    t.notMatch(rules, /41919/, 'the rule went with the release');
    const [inb] = (await env.client('z', [c.ip, '9000'])) as ClientOut[];
    t.equal(inb?.hello?.port, 9000, 'released: inbound reaches the app again');
  });

  await t.test("two pods using the same loopback tuples at once never get each other's destination", async (t) => {
    // Both pods connect to their own IP:15001 from the same ephemeral range; the netns cookie in the
    // key keeps them apart (and would, were they to share an address, as over loopback).
    const [ra, rb] = (await Promise.all([
      env.client('a', ['0', '0', '--vary', '--count', '1500', '--ttl', '60']),
      env.client('b', ['0', '0', '--vary', '--count', '1500', '--ttl', '60']),
    ])) as [VaryOut[], VaryOut[]];
    for (const [pod, r] of [
      ['a', ra[0]],
      ['b', rb[0]],
    ] as const) {
      t.ok(r && r.done > 100, `pod ${pod} made connections (${r?.done})`);
      t.equal(r?.wrong, 0, `pod ${pod}: no wrong SO_ORIGINAL_DST (${JSON.stringify(r?.examples)})`);
      t.equal(r?.errors, 0, `pod ${pod}: no errors`);
    }
  });

  await t.test('detaching a pod hands inbound back to the app', async (t) => {
    dp.maps.pods.delete(b.ip);
    dp.maps.netns.delete(cookieB);
    t.ok(dp.detachPod(cookieB, [b.ip]));
    t.notOk(dp.attachedPods().has(cookieB));
    t.ok(dp.attachedPods().has(cookieA));
    const [r] = (await env.client('c', [b.ip, String(APP)])) as ClientOut[];
    t.equal(r?.hello?.port, APP, 'straight to the app');
  });

  await t.test('nothing of ours is attached in the node netns', async (t) => {
    const nodeIno = statSync(env.node).ino;
    const links = JSON.parse(execFileSync('bpftool', ['-j', 'link', 'show'], { encoding: 'utf8' })) as Array<{
      type: string;
      netns_ino?: number;
      prog_id: number;
    }>;
    const ours = links.filter((l) => l.type === 'netns');
    t.ok(
      ours.some((l) => l.netns_ino === statSync(a.netns).ino),
      "sk_lookup sits in pod a's netns",
    );
    t.notOk(
      ours.some((l) => l.netns_ino === nodeIno),
      'no netns link in the node netns',
    );
    const tc = execFileSync('nsenter', [`--net=${env.node}`, 'bpftool', 'net', 'show'], { encoding: 'utf8' });
    t.notMatch(tc, /ambpf/, 'no tc/xdp program in the node netns');
  });
});
