// Prometheus metrics of a running loader. Kernel counters are read from ambpf_stats at scrape time
// (never cached: a scrape shows what the datapath did up to that moment); map fill comes from the
// loader's MapMonitor, so a scrape costs O(counters + maps), never a walk of a map's entries.
import { createRequire } from 'node:module';
import type * as PromClient from 'prom-client';
import type { DatapathMaps } from '../bpf/datapath-maps.ts';
import { STAT_NAMES } from '../bpf/schema.ts';
import type { ReconcileStats } from '../reconcile/reconciler.ts';
import { MAP_SPECS, MapMonitor, type MapHealth } from './map-health.ts';
import type { CgroupPlacement } from '../node/cgroup.ts';

// prom-client's four modules ambpf uses, not its index: the index also loads the Pushgateway (https,
// tls, zlib), the cluster aggregator, histograms and summaries, 0.7 MiB of the long-lived loader's
// heap (issue 20). The files are prom-client 15's (package-lock pins it); test/metrics covers them.
const load = createRequire(import.meta.url);
const Registry = load('prom-client/lib/registry') as typeof PromClient.Registry;
const Counter = load('prom-client/lib/counter') as typeof PromClient.Counter;
const Gauge = load('prom-client/lib/gauge') as typeof PromClient.Gauge;
const collectDefaultMetrics = load('prom-client/lib/defaultMetrics') as typeof PromClient.collectDefaultMetrics;
type Registry = PromClient.Registry;

export interface MetricsSources {
  readonly maps: () => DatapathMaps | undefined;
  readonly reconcile: () => ReconcileStats;
  /** Watch counters (Kubernetes source), absent for the pods-file source. */
  readonly watch?: () => { watchRestarts: number; lastEventAt: number | undefined };
  /**
   * Fill and failed inserts of every map (map-health.ts), refreshed on the loader's clock: a scrape
   * reads its last figures, never walks a map. Absent: one is refreshed per scrape over `maps` (tests).
   */
  readonly mapMonitor?: MapMonitor;
  /** inpod with ZDS: each connected ztunnel's cgroup against the attach cgroup (src/agent/ztunnel-cgroup.ts). */
  readonly ztunnelCgroups?: () => ReadonlyArray<{ readonly placement: CgroupPlacement }>;
}

const PLACEMENTS: readonly CgroupPlacement[] = ['inside', 'outside', 'unknown'];

export function createMetricsRegistry(src: MetricsSources): Registry {
  const registry = new Registry();
  // The event-loop lag histogram samples on a timer: prom-client's default, every 10 ms, woke the idle
  // loader 100 times a second (a third of its idle CPU at 250 pods, issue 20); once a second still
  // shows any stall worth a metric.
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 1000 });
  const monitor = src.mapMonitor;
  const fallback = monitor
    ? undefined
    : new MapMonitor({
        maps: () => src.maps()?.raw,
        stats: () => src.maps()?.stats(),
        loaderFailures: () => src.reconcile().mapFullByMap ?? {},
      });
  const health = (): readonly MapHealth[] => (monitor ? monitor.current() : fallback!.refresh());

  new Counter({
    name: 'ambpf_redirected_connections_total',
    help: 'Datapath program outcomes from ambpf_stats (summed over CPUs), by hook and outcome.',
    labelNames: ['hook', 'outcome'],
    registers: [registry],
    collect() {
      const maps = src.maps();
      if (!maps) return;
      const stats = maps.stats();
      this.reset();
      for (const name of STAT_NAMES) {
        const i = name.indexOf('_');
        this.inc({ hook: name.slice(0, i), outcome: name.slice(i + 1) }, Number(stats[name]));
      }
    },
  });

  new Gauge({
    name: 'ambpf_map_entries',
    help: 'Entries in an ambpf map (refreshed by the loader every few seconds).',
    labelNames: ['map'],
    registers: [registry],
    collect() {
      for (const f of health()) if (f.entries !== null) this.set({ map: f.map }, f.entries);
    },
  });
  new Gauge({
    name: 'ambpf_map_max_entries',
    help: 'max_entries of an ambpf map (its configured size).',
    labelNames: ['map'],
    registers: [registry],
    collect() {
      for (const f of health()) if (f.maxEntries !== null) this.set({ map: f.map }, f.maxEntries);
    },
  });
  new Gauge({
    name: 'ambpf_map_pressure',
    help: 'Fill of an ambpf map, entries / max_entries (1 = full: inserts fail).',
    labelNames: ['map'],
    registers: [registry],
    collect() {
      for (const f of health()) if (f.fill !== null) this.set({ map: f.map }, f.fill);
    },
  });
  new Counter({
    name: 'ambpf_map_insert_failures_total',
    help: 'Inserts into an ambpf map that failed (full, or no socket memory), by who inserted: the datapath programs or the loader.',
    labelNames: ['map', 'by'],
    registers: [registry],
    collect() {
      this.reset();
      for (const f of health()) {
        const spec = MAP_SPECS.find((s) => s.map === f.map);
        this.inc(
          { map: f.map, by: spec?.filledBy === 'loader' ? 'loader' : 'datapath' },
          spec?.filledBy === 'loader' ? f.failedByLoader : f.failedByPrograms,
        );
      }
    },
  });
  new Gauge({
    name: 'ambpf_reconcile_duration_seconds',
    help: 'Duration of the last reconcile pass.',
    registers: [registry],
    collect() {
      this.set(src.reconcile().lastDurationMs / 1000);
    },
  });
  new Counter({
    name: 'ambpf_reconcile_errors_total',
    help: 'Entries or attachments a reconcile pass could not apply.',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(src.reconcile().errors);
    },
  });
  new Counter({
    name: 'ambpf_reconcile_passes_total',
    help: 'Reconcile passes run.',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(src.reconcile().passes);
    },
  });
  new Counter({
    name: 'ambpf_watch_restarts_total',
    help: 'Kubernetes watch restarts after an error or a stall.',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(src.watch?.().watchRestarts ?? 0);
    },
  });
  new Gauge({
    name: 'ambpf_watch_last_event_age_seconds',
    help: 'Seconds since the watch last heard an event or bookmark (-1 before the first).',
    registers: [registry],
    collect() {
      const at = src.watch?.().lastEventAt;
      this.set(at === undefined ? -1 : (Date.now() - at) / 1000);
    },
  });
  if (src.ztunnelCgroups) {
    const checks = src.ztunnelCgroups;
    // Not a /healthz problem: restarting the loader cannot move ztunnel. An alert on outside > 0 can.
    new Gauge({
      name: 'ambpf_ztunnel_processes',
      help:
        "ztunnel processes connected over ZDS, by whether their cgroup is inside the one ambpf's programs are " +
        'attached to (outside: its spoofed inbound legs fail and its DNS answers are not fixed; see the log).',
      labelNames: ['cgroup'],
      registers: [registry],
      collect() {
        const now = checks();
        for (const p of PLACEMENTS) this.set({ cgroup: p }, now.filter((c) => c.placement === p).length);
      },
    });
  }
  return registry;
}
