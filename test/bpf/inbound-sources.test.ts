// Who the node-topology tc program must NOT steer into ztunnel (review issues 2 and 5), with real
// sockets in netns of our own:
// - ztunnel's own upstream to a local pod that spoofs the original client's address (real ztunnel
//   uses IP_TRANSPARENT sockets): it comes from ztunnel's host veth, whatever its source address;
// - traffic the node itself originates (kubelet probes, hostNetwork pods), as Istio's
//   `--socket-exists` exempts it.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { HELPER, makeEnv, openNodeInbound, type Addr } from './env.ts';

interface ClientOut {
  hello?: { port: number; local: Addr; peer: Addr } | null;
  error?: string;
}

const SPOOFED = '198.18.77.7'; // "a client on another node": routed to ztunnel, owned by nobody here
const APP = 8080;

t.test("tc leaves ztunnel's spoofed upstream and node-local traffic alone", { timeout: 90_000 }, async (t) => {
  const env = await makeEnv(t);
  const { b, z } = env.pods;
  const { dp } = await openNodeInbound(t, env);
  t.equal(dp.attachInbound(b.hostIf), 'created');
  await env.server('b', [String(APP)]);

  await t.test("ztunnel connecting from the client's address (IP_TRANSPARENT) reaches the pod", async (t) => {
    // The pod's replies to the spoofed address must go back to ztunnel, as on a real node.
    execFileSync('ip', [
      '-n',
      env.node.split('/').pop() ?? '',
      'route',
      'add',
      `${SPOOFED}/32`,
      'via',
      z.ip,
      'dev',
      z.hostIf,
    ]);
    const before = dp.stats();
    const [out] = (await env.client('z', [b.ip, String(APP), '--bind', SPOOFED, '--transparent'])) as ClientOut[];
    t.equal(out?.hello?.port, APP, `the pod's app answered, not ztunnel's 15006 (${JSON.stringify(out)})`);
    t.equal(out?.hello?.peer.ip, SPOOFED, 'the pod sees the original client address');
    t.ok(dp.stats().tc_pass_ztunnel > before.tc_pass_ztunnel, "counted as ztunnel's own traffic");
  });

  await t.test('a connection the node itself makes (kubelet probe, hostNetwork pod) is not steered', async (t) => {
    const before = dp.stats();
    const raw = execFileSync('nsenter', [`--net=${env.node}`, 'python3', HELPER, 'client', b.ip, String(APP)], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    const out = JSON.parse(raw.trim().split('\n')[0] ?? '{}') as ClientOut;
    t.equal(out.hello?.port, APP, `reached the pod's app directly (${raw.trim()})`);
    t.equal(dp.stats().tc_steered, before.tc_steered, 'nothing steered');
  });
});
