// Prometheus metrics of a running loader. Kernel counters are read from ambpf_stats at scrape time
// (never cached: a scrape shows what the datapath did up to that moment).
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { DatapathMaps } from '../bpf/datapath-maps.ts';
import { STAT_NAMES } from '../bpf/schema.ts';
import { FILL_MAPS } from '../bpf/names.ts';
import type { ReconcileStats } from '../reconcile/reconciler.ts';

export interface MetricsSources {
  readonly maps: () => DatapathMaps | undefined;
  readonly reconcile: () => ReconcileStats;
  /** Watch counters (Kubernetes source), absent for the pods-file source. */
  readonly watch?: () => { watchRestarts: number; lastEventAt: number | undefined };
}

/** Maps whose fill the loader controls or that grow with traffic: pressure = entries / max_entries. */
const COUNTED_MAPS = FILL_MAPS;

export function countEntries(map: { nextKey(k: Uint8Array | null): Uint8Array | undefined }, limit: number): number {
  let n = 0;
  for (let k = map.nextKey(null); k !== undefined && n <= limit; k = map.nextKey(k)) n++;
  return n;
}

export function createMetricsRegistry(src: MetricsSources): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });

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

  const readMapFill = (): Array<{ map: string; entries: number; max: number }> => {
    const maps = src.maps();
    if (!maps) return [];
    return COUNTED_MAPS.map((name) => {
      const m = maps.raw[name];
      return { map: name, entries: countEntries(m, m.maxEntries), max: m.maxEntries };
    });
  };
  new Gauge({
    name: 'ambpf_map_entries', help: 'Entries in an ambpf map.', labelNames: ['map'], registers: [registry],
    collect() { for (const f of readMapFill()) this.set({ map: f.map }, f.entries); },
  });
  new Gauge({
    name: 'ambpf_map_pressure', help: 'Fill of an ambpf map, entries / max_entries (1 = full: inserts fail).', labelNames: ['map'], registers: [registry],
    collect() { for (const f of readMapFill()) this.set({ map: f.map }, f.max === 0 ? 0 : f.entries / f.max); },
  });
  new Gauge({
    name: 'ambpf_reconcile_duration_seconds', help: 'Duration of the last reconcile pass.', registers: [registry],
    collect() { this.set(src.reconcile().lastDurationMs / 1000); },
  });
  new Counter({
    name: 'ambpf_reconcile_errors_total', help: 'Entries or attachments a reconcile pass could not apply.', registers: [registry],
    collect() { this.reset(); this.inc(src.reconcile().errors); },
  });
  new Counter({
    name: 'ambpf_reconcile_passes_total', help: 'Reconcile passes run.', registers: [registry],
    collect() { this.reset(); this.inc(src.reconcile().passes); },
  });
  new Counter({
    name: 'ambpf_watch_restarts_total', help: 'Kubernetes watch restarts after an error or a stall.', registers: [registry],
    collect() { this.reset(); this.inc(src.watch?.().watchRestarts ?? 0); },
  });
  new Gauge({
    name: 'ambpf_watch_last_event_age_seconds', help: 'Seconds since the watch last heard an event or bookmark (-1 before the first).', registers: [registry],
    collect() {
      const at = src.watch?.().lastEventAt;
      this.set(at === undefined ? -1 : (Date.now() - at) / 1000);
    },
  });
  return registry;
}
