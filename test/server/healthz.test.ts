// /healthz says why the loader cannot do its job (issue 19 item 6): a watch silent past its watchdog,
// a pin removed under the loader, a ZDS server ztunnel cannot reach. /readyz is unchanged.
import t from 'tap';
import { mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { startHttpServer } from '../../src/server/http.ts';
import { healthProblems } from '../../src/server/health.ts';
import { ZdsServer } from '../../src/zds/index.ts';
import { captureLog } from '../helpers/log.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { socketPath } from '../zds/helpers.ts';

t.test('the watch: healthy while syncing and while events come, unhealthy past twice its watchdog', async (t) => {
  const src = { synced: false, lastEventAgeMs: undefined as number | undefined };
  const check = (): string[] => healthProblems({ source: () => src, staleAfterMs: 1000 });
  t.same(check(), [], 'before the first sync (the startup probe waits, /readyz says not ready)');
  src.synced = true;
  src.lastEventAgeMs = 1500;
  t.same(check(), [], 'past one bound the watchdog relists: not yet a problem');
  src.lastEventAgeMs = 2500;
  t.match(check(), [/^the Kubernetes watch heard nothing for 3 s, past its watchdog \(relist after 1 s\)/]);
  t.same(
    healthProblems({ source: () => ({ synced: true, lastEventAgeMs: 1e9 }) }),
    [],
    'no watch (pods file): no watchdog to judge by',
  );
});

t.test('pins: each missing one is named', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-pins-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const pins = ['connect4', 'ambpf_pods'].map((n) => join(dir, n));
  for (const p of pins) writeFileSync(p, '');
  t.same(healthProblems({ pins: () => pins }), []);
  unlinkSync(pins[1]!);
  t.same(healthProblems({ pins: () => pins }), [
    `pins missing: ${pins[1]} (removed under the loader: a restart re-creates them)`,
  ]);
});

t.test('ZDS: a socket file removed or a closed server is a problem', async (t) => {
  const path = socketPath(t);
  const server = await ZdsServer.listen({ path, log: captureLog().log, snapshot: async () => [] });
  t.teardown(() => server.close());
  t.equal(server.problem(), undefined, 'listening: fine, with no ztunnel connected yet');
  unlinkSync(path);
  t.equal(server.problem(), `the ZDS socket ${path} is gone: ztunnel cannot reach this agent`);
  await server.close();
  t.equal(server.problem(), `the ZDS server on ${path} is closed`);
});

t.test('/healthz answers 503 with every reason, 200 once they are gone; /readyz as before', async (t) => {
  let problems: string[] = [];
  let ready = false;
  const { server, url } = await startHttpServer(
    '127.0.0.1:0',
    {
      ready: () => ready,
      notReadyReason: () => 'first reconcile not finished',
      problems: () => problems,
    },
    new Registry(),
  );
  t.teardown(() => server.close());
  const get = async (path: string): Promise<[number, string]> => {
    const r = await fetch(url + path);
    return [r.status, await r.text()];
  };
  t.same(await get('/healthz'), [200, 'ok\n']);
  t.same(await get('/readyz'), [503, 'not ready: first reconcile not finished\n']);
  problems = ['pins missing: /x', 'the ZDS socket /y is gone: ztunnel cannot reach this agent'];
  t.same(await get('/healthz'), [
    503,
    'unhealthy: pins missing: /x; the ZDS socket /y is gone: ztunnel cannot reach this agent\n',
  ]);
  ready = true;
  t.same(await get('/readyz'), [200, 'ready\n'], '/readyz only tells readiness');
  problems = [];
  t.same(await get('/healthz'), [200, 'ok\n']);
});
