// The loader's /metrics registry (src/metrics/registry.ts) without a datapath: it loads prom-client's
// modules one by one rather than its index (issue 20's RSS), so this checks those modules still give
// a registry whose exposition has ambpf's metrics and prom-client's default process metrics, and that
// the index's extras (the Pushgateway's https/tls/zlib) stay unloaded.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createMetricsRegistry } from '../../src/metrics/registry.ts';

t.test('the exposition holds ambpf and default metrics', async (t) => {
  const registry = createMetricsRegistry({
    maps: () => undefined,
    reconcile: () => ({
      passes: 7,
      errors: 1,
      mapFull: 0,
      mapFullByMap: {},
      lastDurationMs: 250,
      lastAt: Date.now(),
      lastError: undefined,
    }),
    watch: () => ({ watchRestarts: 2, lastEventAt: undefined }),
  });
  const text = await registry.metrics();
  t.match(text, /^ambpf_reconcile_passes_total 7$/m);
  t.match(text, /^ambpf_reconcile_errors_total 1$/m);
  t.match(text, /^ambpf_reconcile_duration_seconds 0\.25$/m);
  t.match(text, /^ambpf_watch_restarts_total 2$/m);
  t.match(text, /^ambpf_watch_last_event_age_seconds -1$/m);
  t.match(text, /^process_resident_memory_bytes \d+$/m, 'default process metrics');
  t.match(text, /^nodejs_heap_size_used_bytes \d+$/m);
  t.match(text, /^nodejs_eventloop_lag_seconds /m);
  t.equal(registry.contentType.split(';')[0], 'text/plain');
});

t.test('loading the registry leaves https, tls and zlib unloaded', async (t) => {
  const mod = fileURLToPath(new URL('../../src/metrics/registry.ts', import.meta.url));
  const script = `await import(${JSON.stringify(mod)});
    console.log(JSON.stringify(process.moduleLoadList.filter((m) => /^NativeModule (https|tls|zlib|cluster)$/.test(m))))`;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  t.same(JSON.parse(out), []);
});
