// The loader's life on a node: a SIGKILL never stops traffic and a restart adopts its pins without
// attaching twice; bad pods-file objects are reported one by one while the good ones apply; a full
// map is an error and a counter, not a crash; the same-node splice keeps every byte.
import t from 'tap';
import { join } from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import { startTestbed, defaultSpec, type Testbed } from '../../src/testbed/index.ts';
import { startHttpServer, curl } from '../../src/testbed/helpers.ts';
import { openPinnedMaps } from '../../src/bpf/datapath-maps.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { startLoader, waitReady, metrics, AMBPF_BIN as AMBPF, type Loader } from '../helpers/loader.ts';
import { tracedCurl } from '../helpers/standin.ts';
import { eventually } from '../helpers/wait.ts';

let tb: Testbed;
let podsFile: string;
let node1: Loader;
let node2: Loader;

t.before(async () => {
  tb = await startTestbed(defaultSpec(), { topology: 'node', prefix: testPrefix() });
  podsFile = join(tb.info.runDir, 'pods.json');
  tb.writePodsList(podsFile);
  // --splice: the 256 MiB test below goes through the sockhash splice.
  node1 = startLoader(tb, tb.node('node1'), podsFile, ['--splice']);
  // node2's ambient-pod map holds one entry: its second mesh pod cannot fit.
  node2 = startLoader(tb, tb.node('node2'), podsFile, ['--max-pods', '1']);
  await Promise.all([waitReady(tb, node1), waitReady(tb, node2)]);
  await startHttpServer(tb, 'app1-node2', 8080);
});
t.teardown(async () => {
  for (const l of [node1, node2]) l?.proc.kill('SIGTERM');
  await Promise.all([node1, node2].map((l) => l?.proc.exited));
  await tb?.down();
});

const passCount = (metricsText: string): number =>
  Number(/^ambpf_reconcile_passes_total (\d+)/m.exec(metricsText)?.[1] ?? NaN);

/** Programs attached to the node's kubepods cgroup, as bpftool sees them. */
async function cgroupPrograms(loader: Loader): Promise<string[]> {
  const r = await tb.exec(loader.node.name, ['bpftool', '-j', 'cgroup', 'show', loader.node.kubepodsCgroup]);
  return (JSON.parse(r.stdout.trim() || '[]') as Array<{ name: string }>).map((p) => p.name).sort();
}

t.test('SIGKILL during a stream of connections loses none; the restart adopts every pin', async (t) => {
  const attachedBefore = await cgroupPrograms(node1);
  t.equal(attachedBefore.length, 6, 'six cgroup programs attached');
  const results: number[] = [];
  const deadline = Date.now() + 4000;
  let killed = false;
  // Bounded: at most 200 requests, at most 4 s.
  for (let i = 0; i < 200 && Date.now() < deadline; i++) {
    const r = await curl(tb, 'app2-node1', tb.pod('app1-node2').ip, 8080, { timeoutMs: 3000 });
    results.push(r.exitCode);
    if (i === 5 && !killed) {
      node1.proc.kill('SIGKILL');
      await node1.proc.exited;
      killed = true;
    }
  }
  t.ok(killed, 'the loader was killed mid-stream');
  t.ok(results.length > 10, `${results.length} requests made`);
  t.same(
    results.filter((c) => c !== 0),
    [],
    'every request succeeded while the loader was dead',
  );
  const dead = await tracedCurl(tb, 'app2-node1', tb.pod('app1-node2').ip, 8080, ['node1'], { node1: ['outbound'] });
  t.ok(
    dead.lines['node1']?.some((e) => e.direction === 'outbound'),
    'still redirected with no loader running',
  );

  node1.restart();
  await waitReady(tb, node1);
  const attached = node1
    .logLines()
    .filter((l) => l['msg'] === 'datapath attached')
    .at(-1)?.['links'] as Record<string, string>;
  t.same(
    Object.values(attached),
    ['adopted', 'adopted', 'adopted', 'adopted', 'adopted', 'adopted'],
    'every cgroup link adopted',
  );
  t.same(await cgroupPrograms(node1), attachedBefore, 'no duplicate attachment');
});

t.test('SIGTERM stops the loader cleanly and keeps every pin: traffic stays redirected', async (t) => {
  const pinsBefore = (await tb.exec('node1', ['ls', '-R', tb.node('node1').bpffsDir])).stdout;
  node1.proc.kill('SIGTERM');
  const code = await Promise.race([
    node1.proc.exited,
    new Promise<string>((res) => setTimeout(() => res('timeout'), 10_000)),
  ]);
  t.equal(code, 0, 'exit code 0 after SIGTERM');
  t.ok(
    node1.logLines().some((l) => String(l['msg']).startsWith('stopping')),
    'says it is stopping and keeping the pins',
  );
  t.equal(
    (await tb.exec('node1', ['ls', '-R', tb.node('node1').bpffsDir])).stdout,
    pinsBefore,
    'every pin is still there',
  );
  t.equal((await cgroupPrograms(node1)).length, 6, 'the cgroup programs stay attached');
  const r = await tracedCurl(tb, 'app2-node1', tb.pod('app1-node2').ip, 8080, ['node1'], { node1: ['outbound'] });
  t.ok(
    r.lines['node1']?.some((e) => e.direction === 'outbound'),
    'still redirected',
  );
  node1.restart();
  await waitReady(tb, node1);
});

t.test('malformed pods-file objects: the good ones apply, each bad one is one clear error', async (t) => {
  const list = JSON.parse(readFileSync(podsFile, 'utf8')) as { items: Array<Record<string, unknown>> };
  const template = list.items.find(
    (i) => i['kind'] === 'Pod' && (i['metadata'] as { name: string }).name === 'app2-node1',
  )!;
  const variant = (name: string, patch: (p: Record<string, any>) => void): Record<string, unknown> => {
    const p = JSON.parse(JSON.stringify(template)) as Record<string, any>;
    p['metadata'].name = name;
    p['metadata'].uid = `uid-${name}`;
    patch(p);
    return p;
  };
  list.items.push(
    variant('bad-ip', (p) => {
      p['status'].podIP = '198.19.1.300';
      p['status'].podIPs = [{ ip: '198.19.1.300' }];
    }),
    variant('no-uid', (p) => {
      delete p['metadata'].uid;
      p['status'].podIP = '198.19.1.200';
      p['status'].podIPs = [{ ip: '198.19.1.200' }];
    }),
    variant('zz-dup-ip', () => {
      /* same IP as app2-node1 */
    }),
    variant('extra-fields', (p) => {
      p['spec'].someFutureField = { x: 1 };
      p['status'].podIP = '198.19.1.201';
      p['status'].podIPs = [{ ip: '198.19.1.201' }];
    }),
    { kind: 'Pod', metadata: 'not an object' },
  );
  writeFileSync(`${podsFile}.tmp`, JSON.stringify(list));
  writeFileSync(podsFile, readFileSync(`${podsFile}.tmp`));
  const errorsFor = (what: string): number =>
    node1.logLines().filter((l) => l['level'] === 50 && String(l['msg']).includes(what)).length;
  await eventually(() => errorsFor('zz-dup-ip') > 0, 5000, 'the duplicate IP to be reported');
  // More passes (--resync-ms 300 makes them): each problem must still be said once.
  const passes = passCount(await metrics(tb, node1));
  await eventually(async () => passCount(await metrics(tb, node1)) >= passes + 2, 10_000, 'two more reconcile passes');
  t.equal(errorsFor('mesh/bad-ip'), 1, 'bad IP reported once');
  const lineFor = (what: string) => node1.logLines().find((l) => String(l['msg']).includes(what));
  t.match(lineFor('mesh/bad-ip'), { field: 'status.podIP', reason: '"198.19.1.300" is not an IP address' });
  t.equal(errorsFor('mesh/no-uid'), 1, 'missing uid reported once');
  t.match(lineFor('mesh/no-uid'), { field: 'metadata.uid', reason: 'missing (string required)' });
  t.equal(
    errorsFor('pod <no namespace>/<no name>: metadata: expected object, got string "not an object"'),
    1,
    'an object that is not a pod is named too',
  );
  t.equal(errorsFor('mesh/zz-dup-ip'), 1, 'duplicate IP reported once');
  t.equal(errorsFor('extra-fields'), 1, 'extra fields are fine, but it has no process on this node yet');
  t.match(node1.logLines().find((l) => String(l['msg']).includes('extra-fields'))?.['msg'], /no process found/);
  const maps = openPinnedMaps(tb.node('node1').bpffsDir);
  t.teardown(() => maps.close());
  t.same(
    maps.pods.keys().sort(),
    [tb.pod('app1-node1').ip, tb.pod('app2-node1').ip].sort(),
    'the good pods are in the map',
  );
  tb.writePodsList(podsFile);
});

t.test('a full map is an error and a counter; the loader keeps serving', async (t) => {
  const text = await eventually(
    async () => {
      const m = await metrics(tb, node2);
      return /^ambpf_reconcile_errors_total [1-9]/m.test(m) ? m : undefined;
    },
    5000,
    'reconcile errors to be counted',
  );
  t.match(text, /^ambpf_map_entries\{map="ambpf_pods"\} 1$/m, 'one entry fits');
  t.match(text, /^ambpf_map_pressure\{map="ambpf_pods"\} 1$/m, 'pressure 1: full');
  const full = node2.logLines().filter((l) => l['level'] === 50 && /ambpf_pods .*(full|E2BIG)/i.test(String(l['msg'])));
  t.ok(full.length >= 1, 'the full map is logged with the map name');
  const r = await tb.exec('node2', ['curl', '-sf', '--max-time', '2', 'http://127.0.0.1:15099/healthz'], {
    check: false,
  });
  t.equal(r.code, 0, 'still healthy');
});

t.test('256 MiB through a same-node spliced pair arrives intact', async (t) => {
  const size = 256 * 1024 * 1024;
  const server = `
import socket, hashlib
l = socket.socket(socket.AF_INET, socket.SOCK_STREAM); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 9100)); l.listen(1); l.settimeout(60)
c, _ = l.accept(); c.settimeout(60); h = hashlib.sha256(); n = 0
while n < ${size}:
    b = c.recv(1 << 20)
    if not b: break
    h.update(b); n += len(b)
c.sendall(("%d %s\\n" % (n, h.hexdigest())).encode()); c.close()`;
  const client = `
import socket, hashlib, random
r = random.Random(7); chunk = r.randbytes(128 * 1024); h = hashlib.sha256(); n = 0
s = socket.create_connection(("${tb.pod('app1-node1').ip}", 9100), 10); s.settimeout(60)
while n < ${size}:
    s.sendall(chunk); h.update(chunk); n += len(chunk)
reply = b""
while not reply.endswith(b"\\n"):
    b = s.recv(256)
    if not b: break
    reply += b
print("%d %s|%s" % (n, h.hexdigest(), reply.decode().strip()))`;
  const srv = tb.spawn('app1-node1', ['python3', '-c', server]);
  t.teardown(() => srv.kill('SIGKILL'));
  await eventually(
    async () => (await tb.exec('app1-node1', ['ss', '-Hltn', 'sport = :9100'])).stdout.trim() !== '',
    5000,
    'the sink to listen',
  );
  const maps = openPinnedMaps(tb.node('node1').bpffsDir);
  t.teardown(() => maps.close());
  const before = maps.stats().skmsg_spliced_bytes;
  const r = await tb.exec('app2-node1', ['python3', '-c', client], { timeoutMs: 90_000 });
  const [sent, received] = r.stdout.trim().split('|');
  t.equal(received, sent, 'the receiver counted and hashed exactly what was sent');
  t.match(sent, new RegExp(`^${size} [0-9a-f]{64}$`));
  const spliced = maps.stats().skmsg_spliced_bytes - before;
  t.ok(spliced >= BigInt(size), `the bytes took the splice (${spliced} bytes spliced)`);
});

t.test('ambpf uninstall removes everything ambpf made on the node, and only that', async (t) => {
  const node = tb.node('node1');
  t.match(
    (await tb.exec('istio-system/ztunnel-node1', ['ip', 'rule'])).stdout,
    /iif eth0 lookup 100/,
    'policy route present before',
  );
  node1.proc.kill('SIGTERM');
  await node1.proc.exited;
  const r = await tb.exec('node1', [AMBPF, 'uninstall', '--bpffs', node.bpffsDir, '-j']);
  const report = JSON.parse(r.stdout) as { links: string[]; maps: string[]; policyRouteRemovedIn: string | null };
  t.equal(report.links.filter((l) => !l.startsWith('tc-')).length, 7, 'six cgroup links and sk_lookup detached');
  t.ok(
    report.links.some((l) => l.startsWith('tc-')),
    'inbound tc links detached',
  );
  t.ok(report.maps.includes('ambpf_pods'), 'maps unpinned');
  t.ok(report.policyRouteRemovedIn, 'ztunnel netns found from the sk_lookup link');
  t.same(await cgroupPrograms(node1), [], 'nothing attached to kubepods');
  t.notMatch((await tb.exec('istio-system/ztunnel-node1', ['ip', 'rule'])).stdout, /lookup 100/, 'policy route gone');
  t.equal(
    (await tb.exec('node1', ['ls', '-A', node.bpffsDir], { check: false })).stdout.trim(),
    '',
    'bpffs dir empty or gone',
  );
  const direct = await tracedCurl(tb, 'app2-node1', tb.pod('app1-node2').ip, 8080, ['node1']); // throws if it fails
  t.match(direct.body, /hello from app1-node2/, 'traffic flows');
  t.same(direct.lines['node1'], [], 'directly, without ztunnel (no line within the observed window)');
  const again = await tb.exec('node1', [AMBPF, 'uninstall', '--bpffs', node.bpffsDir]);
  t.match(again.stdout, /nothing of ambpf's/, 'a second uninstall is a no-op');
  node1.restart();
  await waitReady(tb, node1);
});
