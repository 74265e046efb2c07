// Full maps on the real kernel (issue 19 item 3): each map the node topology fills, created small
// (mapSizes), is filled by real connections or pods; the connections that exist keep working, the new
// one fails closed (never around ztunnel), the failed insert is counted per map, exported as a
// metric, logged naming the map, and a pod that does not fit is shown by `ambpf status`.
import t from 'tap';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ifIndex, netnsCookie, withNetns, MapFullError } from '../../src/libbpf/index.ts';
import { openDatapath } from '../../src/bpf/datapath.ts';
import * as s from '../../src/bpf/schema.ts';
import { MapMonitor } from '../../src/metrics/map-health.ts';
import { createMetricsRegistry } from '../../src/metrics/registry.ts';
import { collectStatus, renderStatus } from '../../src/status/status.ts';
import type { ReconcileStats, StateFile } from '../../src/reconcile/reconciler.ts';
import { captureLog } from '../helpers/log.ts';
import { HELPER, jsonLines, makeEnv, waitUntil } from './env.ts';

interface Line {
  paused?: boolean;
  hello?: { port: number; orig: { ip: string; port: number } | { error: number } } | null;
  sha?: string;
  sha_local?: string;
  error?: string;
}

const SIZES = { ambpf_pods: 3, ambpf_netns: 3, ambpf_pair_dst: 4, ambpf_outflow: 3 };

t.test(
  'full maps: existing connections keep working, the overflow is counted and named',
  { timeout: 120_000 },
  async (t) => {
    const env = await makeEnv(t);
    const { a, b, c, z } = env.pods;
    const dp = await openDatapath({ bpffs: env.bpffs, cgroup: env.cgroup, netns: env.node, mapSizes: SIZES });
    t.teardown(() => dp.close());
    for (const [name, size] of Object.entries(SIZES))
      t.equal(dp.maps.raw[name as keyof typeof SIZES].maxEntries, size, `${name} created with ${size} entries`);

    const idx = (ifname: string): number => withNetns(env.node, () => ifIndex(ifname));
    dp.maps.config.set(s.defaultConfig());
    dp.maps.ztunnel.set(
      s.ztunnelValue({
        ip: z.ip,
        netnsCookie: netnsCookie(z.netns),
        hostIfindex: idx(z.hostIf),
        mac: z.mac,
        hostMac: z.hostMac,
      }),
    );
    dp.maps.netns.set(netnsCookie(a.netns), { podIp: a.ip, flags: s.POD_AMBIENT });
    dp.maps.netns.set(netnsCookie(z.netns), { podIp: z.ip, flags: s.POD_IS_ZTUNNEL });
    // b: in ambpf_pods (inbound steered) but not in ambpf_netns, so its own connections are not
    // redirected: each one is an ambpf_outflow entry.
    dp.maps.pods.set(b.ip, { netnsCookie: netnsCookie(b.netns), hostIfindex: idx(b.hostIf), flags: s.POD_AMBIENT });
    await env.server('z', ['15001', '--v6']);
    const standIn = await env.server('z', ['15006,15008', '--transparent']);
    await dp.attachZtunnel({ netnsPath: z.netns, pid: standIn.pid, hostIfname: z.hostIf });
    dp.attachInbound(b.hostIf);
    await env.server('c', ['80,9000']);

    const captured = captureLog();
    const monitor = new MapMonitor({ maps: () => dp.maps.raw, stats: () => dp.stats(), log: captured.log });
    monitor.refresh();

    /** `count` clients that connect and wait (idle, established) until `go` exists, then send 64 KiB. */
    const idleClients = async (
      pod: 'a' | 'b',
      host: string,
      port: number,
      count: number,
      go: string,
    ): Promise<Array<{ lines: Line[]; exited: Promise<number | null> }>> => {
      const out = [];
      for (let i = 0; i < count; i++) {
        const p = env.pausedClient(pod, host, port, go);
        out.push({ lines: jsonLines<Line>(p), exited: p.exited });
      }
      return out;
    };
    const finished = (l: Line[]): Line | undefined => l.find((x) => x.sha !== undefined || x.error !== undefined);

    await t.test('ambpf_pair_dst full: a new redirected connection fails closed, the others complete', async (t) => {
      const go = join('/tmp', `${env.prefix}-pair-go`);
      t.teardown(() => rmSync(go, { force: true }));
      const before = dp.stats();
      // ztunnel's stand-in serves one connection at a time: the rest wait in its accept queue, ESTABLISHED
      // on the client's side, each holding its pair entry.
      const idle = await idleClients('a', c.ip, 80, SIZES.ambpf_pair_dst, go);
      t.ok(
        await waitUntil(() => dp.maps.pairs.keys().length === SIZES.ambpf_pair_dst, 20_000),
        'ambpf_pair_dst is full',
      );
      const extra = env.spawn('a', ['python3', '-u', HELPER, 'client', c.ip, '80']);
      const extraLines = jsonLines<Line>(extra);
      t.ok(
        await waitUntil(() => dp.stats().mapfull_pair_dst > before.mapfull_pair_dst, 20_000),
        'the failed insert is counted (mapfull_pair_dst)',
      );
      writeFileSync(go, '');
      for (const [i, cl] of idle.entries()) {
        t.equal(await cl.exited, 0, `client ${i} finished`);
        const out = finished(cl.lines);
        t.same(out?.hello?.orig, { ip: c.ip, port: 80 }, `existing connection ${i} still has its original dst`);
        t.ok(out?.sha && out.sha === out.sha_local, `existing connection ${i} carried its bytes intact`);
      }
      await extra.exited;
      const out = finished(extraLines) ?? extraLines[0];
      t.equal(out?.hello?.port, 15001, 'the overflowing connection still went to ztunnel, never around it');
      t.ok(out?.hello?.orig && 'error' in out.hello.orig, 'ztunnel cannot learn its original dst: it fails closed');
      t.equal(
        dp.stats().connect4_redirected - before.connect4_redirected,
        BigInt(SIZES.ambpf_pair_dst + 1),
        'every connection was redirected',
      );
    });

    await t.test("ambpf_outflow full: a pod's new own connection fails closed, the others complete", async (t) => {
      const go = join('/tmp', `${env.prefix}-out-go`);
      t.teardown(() => rmSync(go, { force: true }));
      const before = dp.stats();
      const idle = await idleClients('b', c.ip, 9000, SIZES.ambpf_outflow, go);
      t.ok(
        await waitUntil(() => dp.maps.outflow.keys().length === SIZES.ambpf_outflow, 20_000),
        'ambpf_outflow is full',
      );
      const extra = env.spawn('b', ['python3', '-u', HELPER, 'client', c.ip, '9000']);
      const extraLines = jsonLines<Line>(extra);
      t.ok(
        await waitUntil(() => dp.stats().mapfull_outflow > before.mapfull_outflow, 20_000),
        'the failed insert is counted (mapfull_outflow)',
      );
      writeFileSync(go, '');
      for (const [i, cl] of idle.entries()) {
        t.equal(await cl.exited, 0, `client ${i} finished`);
        const out = finished(cl.lines);
        t.equal(out?.hello?.port, 9000, `existing connection ${i} reached its peer directly`);
        t.ok(out?.sha && out.sha === out.sha_local, `existing connection ${i} carried its bytes intact`);
      }
      await extra.exited;
      const out = finished(extraLines) ?? extraLines[0];
      // Its replies are steered to ztunnel, which knows no such connection and resets it.
      t.ok(out?.error !== undefined && !out.hello, `the overflowing connection fails (${JSON.stringify(out)})`);
      t.equal(dp.maps.outflow.keys().length, 0, 'every entry left with its connection');
    });

    await t.test(
      "ambpf_pods full: the loader's insert fails with the map named, the pod is shown NOT CAPTURED",
      async (t) => {
        dp.maps.pods.set('198.18.9.1', { netnsCookie: 91n, hostIfindex: 0, flags: s.POD_AMBIENT });
        dp.maps.pods.set('198.18.9.2', { netnsCookie: 92n, hostIfindex: 0, flags: s.POD_AMBIENT });
        const err = (() => {
          try {
            dp.maps.pods.set('198.18.9.3', { netnsCookie: 93n, hostIfindex: 0, flags: s.POD_AMBIENT });
            return undefined;
          } catch (e) {
            return e;
          }
        })();
        t.ok(err instanceof MapFullError, 'a MapFullError');
        t.equal((err as MapFullError).map, 'ambpf_pods', 'naming the map');
        t.match((err as Error).message, /ambpf_pods is full \(max_entries 3\)/);
        t.ok(dp.maps.pods.get(b.ip), 'the pods already in the map stay');

        const state: StateFile = {
          node: 'n1',
          updatedAt: new Date().toISOString(),
          ztunnel: null,
          problems: [],
          pods: [
            { name: 'b', namespace: 'shop', uid: 'u-b', ips: [b.ip], hostIfname: b.hostIf },
            { name: 'late', namespace: 'shop', uid: 'u-late', ips: ['198.18.9.3'], hostIfname: null },
          ],
        };
        const report = collectStatus({ bpffs: env.bpffs, maps: dp.maps, links: [], stateFile: '/x', state });
        t.same(report.reconcile.notInMap, ['shop/late'], 'the pod that did not fit is listed');
        t.match(
          renderStatus(report),
          /NOT CAPTURED: 1 pod the loader wants is not in ambpf_pods \(ambpf_pods is full: 3 of 3; raise --max-pods/,
        );
        const fill = report.maps.find((m) => m.map === 'ambpf_pair_dst');
        t.ok(fill && fill.failedInserts >= 1, 'ambpf status shows the failed inserts of ambpf_pair_dst');
      },
    );

    await t.test('the overflow is a metric and a log line naming each map', async (t) => {
      monitor.refresh();
      for (const map of ['ambpf_pair_dst', 'ambpf_outflow']) {
        t.ok(
          captured.lines.some((l) => l['map'] === map && /insert.* failed \(full\)/.test(String(l['msg']))),
          `a log line names ${map}`,
        );
      }
      t.ok(
        captured.lines.some((l) => l['map'] === 'ambpf_pods' && /100% full/.test(String(l['msg']))),
        'ambpf_pods at 100% is logged',
      );
      const reconcile: ReconcileStats = {
        passes: 1,
        errors: 1,
        mapFull: 1,
        mapFullByMap: { ambpf_pods: 1 },
        lastDurationMs: 1,
        lastAt: Date.now(),
        lastError: undefined,
      };
      const loaderMonitor = new MapMonitor({
        maps: () => dp.maps.raw,
        stats: () => dp.stats(),
        loaderFailures: () => reconcile.mapFullByMap,
        log: captured.log,
      });
      loaderMonitor.refresh();
      const text = await createMetricsRegistry({
        maps: () => dp.maps,
        reconcile: () => reconcile,
        mapMonitor: loaderMonitor,
      }).metrics();
      const value = (re: RegExp): number => Number(re.exec(text)?.[1] ?? NaN);
      t.ok(
        value(/ambpf_map_insert_failures_total\{map="ambpf_pair_dst",by="datapath"\} (\d+)/) >= 1,
        'pair_dst failures exported',
      );
      t.ok(
        value(/ambpf_map_insert_failures_total\{map="ambpf_outflow",by="datapath"\} (\d+)/) >= 1,
        'outflow failures exported',
      );
      t.equal(
        value(/ambpf_map_insert_failures_total\{map="ambpf_pods",by="loader"\} (\d+)/),
        1,
        "the loader's failed pod insert exported",
      );
      t.equal(value(/ambpf_map_pressure\{map="ambpf_pods"\} ([\d.]+)/), 1, 'ambpf_pods pressure 1');
      t.equal(
        value(/ambpf_map_max_entries\{map="ambpf_pair_dst"\} (\d+)/),
        SIZES.ambpf_pair_dst,
        'the configured size exported',
      );
      t.match(
        text,
        /ambpf_map_insert_failures_total\{map="ambpf_orig_dst",by="datapath"\} 0/,
        'socket storage has its failure counter too',
      );
    });
  },
);
