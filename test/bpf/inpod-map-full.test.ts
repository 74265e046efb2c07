// Full maps of the inpod topology (issue 19 item 3), created small: no map holds a redirected
// connection in the common case (accept() copies the client's original onto ztunnel's socket, issue
// 20), so with ambpf_inpod_closed (the LRU for clients that close before the accept) full, established
// and new connections alike get their original dst; ambpf_inpod_listen full refuses the new pod's
// inbound (its sk_lookup finds no listener) instead of handing it to the app, while the pod already
// there keeps being served.
import t from 'tap';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MapFullError } from '../../src/libbpf/index.ts';
import { readMapHealth } from '../../src/metrics/map-health.ts';
import { captureInpod, jsonLines, makeEnv, openInpod, waitUntil, type Env } from './env.ts';

interface Line {
  paused?: boolean;
  hello?: {
    port: number;
    local: { ip: string; port: number };
    orig: { ip: string; port: number } | { error: number } | null;
  } | null;
  sha?: string;
  sha_local?: string;
  error?: string;
}

// ambpf_inpod_listen: room for pod a's three listeners (15001, 15006, 15008), none for b's.
const SIZES = { ambpf_inpod_closed: 2, ambpf_inpod_listen: 3 };

t.test(
  'inpod maps full: existing connections and pods keep working, the new ones fail closed',
  { timeout: 120_000 },
  async (t) => {
    const env: Env = await makeEnv(t);
    const { a, b, c } = env.pods;
    const dp = await openInpod(t, env, { mapSizes: SIZES });
    t.equal(dp.inpodMaps.closed.maxEntries, SIZES.ambpf_inpod_closed, 'ambpf_inpod_closed created small');
    t.equal(dp.inpodMaps.listen.maxEntries, SIZES.ambpf_inpod_listen, 'ambpf_inpod_listen created small');

    const ztA = await env.server('a', ['15001,15006,15008', '--v6']);
    const ztB = await env.server('b', ['15001,15006,15008', '--v6']);
    await env.server('a', ['8080']);
    await env.server('b', ['8080']);
    await env.server('c', ['9000']);
    // The reconciler's order (captureInpod): armed first, then ztunnel's listeners, then the maps.
    captureInpod(env, dp, 'a', ztA);

    await t.test('ambpf_inpod_closed full: connections need no map entry, established or new', async (t) => {
      const go = join('/tmp', `${env.prefix}-inpod-go`);
      t.teardown(() => rmSync(go, { force: true }));
      const idle = env.pausedClient('a', c.ip, 9000, go);
      const idleLines = jsonLines<Line>(idle);
      t.ok(await waitUntil(() => idleLines.some((l) => l.paused), 20_000), 'an established connection, idle');
      // Only a client that closes before ztunnel's accept() writes there: fill it by hand.
      for (let i = 0; i < SIZES.ambpf_inpod_closed; i++) {
        const key = new Uint8Array(dp.inpodMaps.closed.keySize);
        key[0] = i + 1;
        dp.inpodMaps.closed.update(key, new Uint8Array(dp.inpodMaps.closed.valueSize));
      }
      writeFileSync(go, '');
      t.equal(await idle.exited, 0);
      const out = idleLines.find((l) => l.sha !== undefined || l.error !== undefined);
      t.same(out?.hello?.orig, { ip: c.ip, port: 9000 }, 'the established connection had its original dst');
      t.ok(
        out?.sha && out.sha === out.sha_local,
        `and carried its bytes intact while the map was full (${JSON.stringify(out)})`,
      );
      const before = dp.stats();
      const [fresh] = (await env.client('a', [c.ip, '9000'])) as Line[];
      t.equal(fresh?.hello?.port, 15001, `the new connection went to ztunnel (${JSON.stringify(fresh)})`);
      t.same(
        fresh?.hello?.orig,
        { ip: c.ip, port: 9000 },
        'and got its original dst: handed over at accept(), no map entry',
      );
      t.equal(dp.stats().mapfull_inpod_closed - before.mapfull_inpod_closed, 0n, 'nothing failed');
      const health = readMapHealth({ ambpf_inpod_closed: dp.inpodMaps.closed }, dp.stats());
      t.match(health, [{ map: 'ambpf_inpod_closed', entries: SIZES.ambpf_inpod_closed, fill: 1 }], 'the map is full');
    });

    await t.test(
      "ambpf_inpod_listen full: the new pod's inbound is refused, the first pod is still served",
      async (t) => {
        let err: unknown;
        try {
          captureInpod(env, dp, 'b', ztB);
        } catch (e) {
          err = e;
        }
        t.ok(err instanceof MapFullError, "the loader's insert fails");
        t.equal((err as MapFullError).map, 'ambpf_inpod_listen', 'naming the map');
        const [toB] = (await env.client('c', [b.ip, '8080'])) as Line[];
        t.ok(
          toB?.error !== undefined && !toB.hello,
          `b's inbound is refused, not handed to its app around ztunnel (${JSON.stringify(toB)})`,
        );
        t.ok(dp.stats().sklookup_refused > 0n, 'sk_lookup refused it');
        const [toA] = (await env.client('c', [a.ip, '8080'])) as Line[];
        t.equal(toA?.hello?.port, 15006, "a's inbound still lands on its ztunnel");
        t.same(toA?.hello?.local, { ip: a.ip, port: 8080 }, 'with the original destination');
      },
    );
  },
);
