// How long the original destination lives (review issue 1): a fire-and-forget client (connect,
// write, close at once) is gone before a slow ztunnel accepts, yet ztunnel's getsockopt
// (SO_ORIGINAL_DST) must still answer; and once both sides have closed nothing is left in the map.
// Node topology (ambpf_pair_dst) and inpod (ambpf_inpod_closed), real sockets in netns of our own.
import t from 'tap';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { linkPin } from '../../src/bpf/pins.ts';
import { netnsCookie } from '../../src/libbpf/index.ts';
import { openDatapath } from '../../src/bpf/datapath.ts';
import type { InpodDatapath } from '../../src/bpf/datapath-inpod.ts';
import type { TestbedProcess } from '../../src/testbed/exec.ts';
import * as s from '../../src/bpf/schema.ts';
import { captureInpod, jsonLines, makeEnv, openInpod, waitUntil, type Env, type Addr, type Hello } from './env.ts';

/** The hellos a `--log` server prints, as they come. */
function helloLog(p: TestbedProcess): { waitFor: (peerPort: number, ms: number) => Promise<Hello> } {
  const seen = jsonLines<Hello>(p);
  return {
    async waitFor(peerPort, ms) {
      const found = (): Hello | undefined => seen.find((x) => x.peer.port === peerPort);
      if (!(await waitUntil(() => found() !== undefined, ms)))
        throw new Error(`the server logged no connection from port ${peerPort} within ${ms} ms`);
      return found() as Hello;
    },
  };
}

/** Fire-and-forget from pod a to dst:port; returns the client's source port. */
async function fire(env: Env, ip: string, port: number): Promise<number> {
  const [out] = (await env.client('a', [ip, String(port), '--fire'])) as Array<{ sockname?: Addr; error?: string }>;
  if (!out?.sockname) throw new Error(`client failed: ${JSON.stringify(out)}`);
  return out.sockname.port;
}

const DELAY_S = '1.5';

/** A "ztunnel" in pod a that accepts DELAY_S late and logs its hellos; pod a captured to it. */
async function slowZtunnel(env: Env, dp: InpodDatapath): Promise<ReturnType<typeof helloLog>> {
  const zt = await env.server('a', ['15001,15006,15008', '--v6', '--accept-delay', DELAY_S, '--log']);
  const log = helloLog(zt);
  captureInpod(env, dp, 'a', zt);
  return log;
}

t.test(
  'node: the original dst outlives a client that closed before ztunnel accepted',
  { timeout: 60_000 },
  async (t) => {
    const env = await makeEnv(t);
    const { a, c, z } = env.pods;
    const dp = await openDatapath({ bpffs: env.bpffs, cgroup: env.cgroup, netns: env.node });
    t.teardown(() => dp.close());
    dp.maps.config.set(s.defaultConfig());
    dp.maps.netns.set(netnsCookie(a.netns), { podIp: a.ip, flags: s.POD_AMBIENT });
    dp.maps.netns.set(netnsCookie(z.netns), { podIp: z.ip, flags: s.POD_IS_ZTUNNEL });
    dp.maps.ztunnel.set(
      s.ztunnelValue({ ip: z.ip, netnsCookie: netnsCookie(z.netns), hostIfindex: 0, mac: z.mac, hostMac: z.hostMac }),
    );
    const log = helloLog(await env.server('z', ['15001', '--v6', '--accept-delay', DELAY_S, '--log']));

    const port = await fire(env, c.ip, 80);
    const hello = await log.waitFor(port, 10_000);
    t.equal(hello.port, 15001, 'redirected to ztunnel');
    t.same(hello.orig, { ip: c.ip, port: 80 }, 'SO_ORIGINAL_DST answers after the client has closed');
    t.ok(
      await waitUntil(() => dp.maps.pairs.keys().length === 0, 5_000),
      `no pair entry left once both sides closed (${JSON.stringify(dp.maps.pairs.keys())})`,
    );

    // The usual order too (ztunnel answers, the client reads and closes): still cleaned up.
    const [out] = (await env.client('a', [c.ip, '81'])) as Array<{ hello?: Hello }>;
    t.same(out?.hello?.orig, { ip: c.ip, port: 81 }, 'a normal connection gets its original dst');
    t.ok(
      await waitUntil(() => dp.maps.pairs.keys().length === 0, 5_000),
      'no pair entry left after a normal connection',
    );
  },
);

t.test(
  'inpod: the original dst outlives a client that closed before ztunnel accepted',
  { timeout: 60_000 },
  async (t) => {
    const env = await makeEnv(t);
    const { c } = env.pods;
    const dp = await openInpod(t, env);
    const log = await slowZtunnel(env, dp);
    const pairCount = (): number => {
      let n = 0;
      for (let k = dp.inpodMaps.closed.nextKey(null); k; k = dp.inpodMaps.closed.nextKey(k)) n++;
      return n;
    };

    const before = dp.stats();
    const port = await fire(env, c.ip, 80);
    const hello = await log.waitFor(port, 10_000);
    t.equal(hello.port, 15001, 'redirected to ztunnel inside the pod');
    t.same(hello.orig, { ip: c.ip, port: 80 }, 'SO_ORIGINAL_DST answers after the client has closed');
    t.ok(dp.stats().inpod_closed_early > before.inpod_closed_early, 'sock_release kept the original');
    t.ok(await waitUntil(() => pairCount() === 0, 5_000), `no ambpf_inpod_closed entry left (${pairCount()})`);

    // IPv6, where sock_release reads no source address: pod a has none of its own, so the client
    // reaches ztunnel at [::1]:15001 from [::1], and the key carries the pod's netns cookie.
    const v6dst = 'fd00:a3bf:9::80';
    const port6 = await fire(env, v6dst, 80);
    const hello6 = await log.waitFor(port6, 10_000);
    t.same(hello6.orig, { ip: v6dst, port: 80 }, 'IPv6: IP6T_SO_ORIGINAL_DST answers after the client has closed');
    t.ok(await waitUntil(() => pairCount() === 0, 5_000), `no ambpf_inpod_closed entry left (${pairCount()})`);

    const [out] = (await env.client('a', [c.ip, '81'])) as Array<{ hello?: Hello; peername?: Addr }>;
    t.same(out?.hello?.orig, { ip: c.ip, port: 81 }, 'a normal connection gets its original dst');
    t.same(out?.peername, { ip: c.ip, port: 81 }, "the app's getpeername still shows the original");
    t.ok(await waitUntil(() => pairCount() === 0, 5_000), 'no entry left after a normal connection');
  },
);

t.test(
  'inpod under lockdown=confidentiality: no sock_release program, an early close loses its original (never direct)',
  { timeout: 60_000 },
  async (t) => {
    const env = await makeEnv(t);
    const { c } = env.pods;
    const lockdownPath = join(t.testdir(), 'lockdown');
    writeFileSync(lockdownPath, 'none integrity [confidentiality]\n');
    const dp = await openInpod(t, env, { lockdownPath });
    t.notOk('release' in dp.links, 'ambpf_inpod_release not attached');
    t.notOk(existsSync(linkPin(env.bpffs, 'release')), 'and not pinned');
    const log = await slowZtunnel(env, dp);
    const hello = await log.waitFor(await fire(env, c.ip, 80), 10_000);
    t.equal(hello.port, 15001, 'still redirected to ztunnel');
    // ENOENT, as for a connection conntrack never saw: ztunnel drops it.
    t.same(hello.orig, { error: 2 }, 'SO_ORIGINAL_DST fails with ENOENT: ztunnel gets no original destination');
    const [out] = (await env.client('a', [c.ip, '81'])) as Array<{ hello?: Hello }>;
    t.same(out?.hello?.orig, { ip: c.ip, port: 81 }, 'a normal connection gets its original dst');
  },
);
