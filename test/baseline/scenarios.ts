// The end-to-end scenarios of issue 4, run through Istio's iptables path on one topology (or its
// nftables backend, in-pod only): real curl, real HTTP servers, and the ztunnel stand-in's log as the
// witness of which way every byte went.
import type { Test } from 'tap';
import {
  startTestbed,
  defaultSpec,
  type Testbed,
  type Topology,
  type ZtunnelLogEntry,
} from '../../src/testbed/index.ts';
import { curl, startHttpServer } from '../../src/testbed/helpers.ts';
import {
  installPath,
  removePath,
  pathRules,
  iptablesSave,
  nftRuleset,
  type Backend,
} from '../../src/baseline/index.ts';
import { inNetns } from '../../src/testbed/run.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { snapshot } from '../testbed/leak-check.ts';
import { linesSince, logMark, type Expect } from '../helpers/standin.ts';

const PORT = 8080;

/** The lines logged on every node since `marks`, once the expected directions are in (see linesSince). */
async function newLines(tb: Testbed, marks: ReadonlyMap<string, number>, expect?: Expect): Promise<ZtunnelLogEntry[]> {
  return Object.values(await linesSince(tb, marks, expect)).flat();
}

const mark = (tb: Testbed): ReadonlyMap<string, number> =>
  logMark(
    tb,
    tb.nodes.map((n) => n.name),
  );

const ipOf = (hostPort: string): string => hostPort.replace(/:\d+$/, '');

export async function runScenarios(t: Test, topology: Topology, backend: Backend = 'iptables'): Promise<void> {
  const prefix = testPrefix();
  const before = await snapshot(prefix);
  const tb = await startTestbed(defaultSpec(), { topology, prefix });
  t.teardown(() => tb.down());
  const ip = (pod: string): string => tb.pod(pod).ip;
  const zip = (node: string): string => tb.ztunnel(node).ip;
  const dstFrom = topology === 'node' ? 'local-address' : 'SO_ORIGINAL_DST';

  const touched = pathRules(tb.info, backend).map((r) => r.netnsPath);
  /** Everything the path may change in a netns (counters aside). */
  const netfilter = async (ns: string): Promise<string[]> => [
    await iptablesSave(ns, 4),
    await iptablesSave(ns, 6),
    await nftRuleset(ns),
  ];
  const savesBefore = await Promise.all(touched.map((ns) => netfilter(ns)));
  await installPath(tb, backend);
  for (const p of ['app2-node1', 'app1-node2', 'client-node2']) await startHttpServer(tb, p, PORT);

  // SYN counters for sockets opened by the stand-in (matched by its cgroup) where they leave: the
  // ztunnel pod's netns (node) or each mesh pod's netns (inpod). Removed before the exactness check.
  const synNetns =
    topology === 'node' ? tb.ztunnels.map((z) => z.netnsPath) : tb.pods.filter((p) => p.mesh).map((p) => p.netnsPath);
  const synRules = tb.ztunnels.flatMap((z) => {
    const cg = tb.pod(`istio-system/${z.pod}`).containerCgroupPath.slice(tb.info.cgroupRoot.length + 1);
    const base = `OUTPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m cgroup --path ${cg}`;
    return [
      `${base} -m comment --comment ambtb-syn-all`,
      `${base} -m mark --mark 0x539/0xfff -m comment --comment ambtb-syn-marked`,
    ];
  });
  const iptIn = (ns: string, args: string[]) => inNetns(ns, ['iptables', '-t', 'mangle', ...args]);
  const nftTablesOf = async (ns: string): Promise<string[]> =>
    (await inNetns(ns, ['nft', 'list', 'tables'])).stdout.split('\n').filter(Boolean);
  const tablesBeforeSyn = new Map<string, string[]>();
  for (const ns of synNetns) tablesBeforeSyn.set(ns, await nftTablesOf(ns));
  for (const ns of synNetns) for (const r of synRules) await iptIn(ns, ['-A', ...r.split(' ')]);
  const synCounts = async (): Promise<{ all: number; marked: number }> => {
    let all = 0;
    let marked = 0;
    for (const ns of synNetns) {
      const save = (await inNetns(ns, ['iptables-save', '-c', '-t', 'mangle'])).stdout;
      for (const m of save.matchAll(/^\[(\d+):\d+\] .*ambtb-syn-(all|marked)/gm)) {
        if (m[2] === 'all') all += Number(m[1]);
        else marked += Number(m[1]);
      }
    }
    return { all, marked };
  };

  // Rule for rule against Istio's golden files: test/baseline/golden.test.ts. Here: all of them are in.
  await t.test('install adds every chain and rule of the path in every netns it touches', async (t) => {
    for (const r of pathRules(tb.info, backend)) {
      for (const [family, tables] of [
        [4, r.iptables],
        [6, r.ip6tables],
      ] as const) {
        const save = await iptablesSave(r.netnsPath, family);
        for (const table of tables) {
          for (const chain of new Set(table.rules.map((x) => x.split(' ')[1] ?? ''))) {
            const want = table.rules.filter((x) => x.split(' ')[1] === chain).length;
            const have = save.split('\n').filter((l) => l.startsWith(`-A ${chain} `)).length;
            t.ok(have >= want, `v${family} ${table.table} ${chain}: ${have} rules, ${want} ours`);
          }
        }
      }
      if (r.nft) {
        const ruleset = await nftRuleset(r.netnsPath);
        for (const table of r.nft.tables) t.ok(ruleset.includes(`table ${table} {`), `nft table ${table}`);
      }
    }
  });

  await t.test('(a) mesh -> mesh on the same node: outbound -> HBONE -> inbound on node1', async (t) => {
    const m = mark(tb);
    const r = await curl(tb, 'app1-node1', ip('app2-node1'), PORT);
    t.equal(
      r.body,
      `hello from app2-node1 peer=${topology === 'node' ? zip('node1') : ip('app2-node1')} path=/\n`,
      r.stderr,
    );
    const lines = await newLines(tb, m, { node1: ['outbound', 'inbound-hbone'] });
    t.equal(lines.length, 2, 'one outbound and one inbound line, no loop');
    const out = lines.find((l) => l.direction === 'outbound');
    t.match(out, {
      node: 'node1',
      originalDst: `${ip('app2-node1')}:${PORT}`,
      dstFrom,
      upstreamProtocol: 'hbone',
      result: 'ok',
    });
    t.equal(ipOf(out?.source ?? ''), ip('app1-node1'), 'source is the client pod');
    t.match(
      lines.find((l) => l.direction === 'inbound-hbone'),
      {
        node: 'node1',
        originalDst: `${ip('app2-node1')}:${PORT}`,
        upstream: `${ip('app2-node1')}:${PORT}`,
        result: 'ok',
      },
    );
  });

  await t.test('(b) cross node: outbound at node1 -> HBONE to the pod:15008 -> inbound-hbone at node2', async (t) => {
    const m = mark(tb);
    const r = await curl(tb, 'app1-node1', ip('app1-node2'), PORT, { path: '/cross' });
    t.match(r.body, /^hello from app1-node2 peer=\S+ path=\/cross\n$/, r.stderr);
    const lines = await newLines(tb, m, { node1: ['outbound'], node2: ['inbound-hbone'] });
    t.equal(lines.length, 2);
    const out = lines.find((l) => l.direction === 'outbound');
    t.match(out, {
      node: 'node1',
      originalDst: `${ip('app1-node2')}:${PORT}`,
      dstFrom,
      upstream: `${ip('app1-node2')}:15008`,
      upstreamProtocol: 'hbone',
      result: 'ok',
    });
    t.equal(ipOf(out?.source ?? ''), ip('app1-node1'), 'source = the client pod IP');
    const inb = lines.find((l) => l.direction === 'inbound-hbone');
    t.match(inb, { node: 'node2', originalDst: `${ip('app1-node2')}:${PORT}`, dstFrom: 'authority', result: 'ok' });
    t.equal(
      ipOf(inb?.source ?? ''),
      topology === 'node' ? zip('node1') : ip('app1-node1'),
      'the HBONE tunnel came from the client side ztunnel',
    );
    t.ok((out?.bytesOut ?? 0) > 0 && out?.bytesOut === inb?.bytesOut, 'the response bytes went through both halves');
  });

  await t.test('(c) non-mesh -> mesh: inbound plaintext via 15006 at the server node only', async (t) => {
    const m = mark(tb);
    const r = await curl(tb, 'client-node1', ip('app1-node2'), PORT);
    t.match(r.body, /^hello from app1-node2 /, r.stderr);
    const lines = await newLines(tb, m, { node2: ['inbound-plaintext'] });
    t.equal(lines.length, 1, 'no outbound capture for a non-mesh client');
    t.match(lines[0], {
      node: 'node2',
      direction: 'inbound-plaintext',
      originalDst: `${ip('app1-node2')}:${PORT}`,
      dstFrom,
      result: 'ok',
    });
    t.equal(ipOf(lines[0]?.source ?? ''), ip('client-node1'), 'source = the non-mesh client');
  });

  await t.test('(d) mesh -> non-mesh: outbound passthrough, no inbound capture', async (t) => {
    const m = mark(tb);
    const r = await curl(tb, 'app1-node1', ip('client-node2'), PORT);
    t.equal(
      r.body,
      `hello from client-node2 peer=${topology === 'node' ? zip('node1') : ip('app1-node1')} path=/\n`,
      r.stderr,
    );
    const lines = await newLines(tb, m, { node1: ['outbound'] });
    t.equal(lines.length, 1);
    t.match(lines[0], {
      node: 'node1',
      direction: 'outbound',
      originalDst: `${ip('client-node2')}:${PORT}`,
      upstream: `${ip('client-node2')}:${PORT}`,
      upstreamProtocol: 'tcp',
      result: 'ok',
    });
  });

  await t.test('bypass: non-mesh outbound never touches ztunnel', async (t) => {
    const m = mark(tb);
    const r = await curl(tb, 'client-node1', ip('client-node2'), PORT);
    t.equal(r.body, `hello from client-node2 peer=${ip('client-node1')} path=/\n`, r.stderr);
    t.same(await newLines(tb, m), []);
  });

  await t.test('bypass: traffic from the probe source 169.254.7.127 is not captured', async (t) => {
    const m = mark(tb);
    let r;
    if (topology === 'node') {
      // A kubelet-like probe from the node, sourced from the probe address.
      await tb.exec('node1', ['ip', 'addr', 'add', '169.254.7.127/32', 'dev', 'lo']);
      r = await curl(tb, 'node1', ip('app2-node1'), PORT, { interface: '169.254.7.127' });
      await tb.exec('node1', ['ip', 'addr', 'del', '169.254.7.127/32', 'dev', 'lo']);
    } else {
      // The node's SNAT rule rewrites a node process's connection to a mesh pod to 169.254.7.127.
      r = await curl(tb, 'node1', ip('app2-node1'), PORT);
    }
    t.equal(r.body, `hello from app2-node1 peer=169.254.7.127 path=/\n`, r.stderr);
    t.same(await newLines(tb, m), [], 'ztunnel saw nothing');
  });

  await t.test('every connection the stand-in opened carried SO_MARK 0x539 from its first SYN', async (t) => {
    const { all, marked } = await synCounts();
    t.ok(all >= 4, `the stand-in opened upstream connections (${all} SYNs)`);
    t.equal(marked, all, 'all of them marked');
    for (const ns of synNetns) for (const r of synRules) await iptIn(ns, ['-D', ...r.split(' ')]);
    // With the nftables backend the counters alone made iptables-nft's `ip mangle` table: drop it again.
    for (const ns of synNetns) {
      for (const tbl of await nftTablesOf(ns)) {
        if (!tablesBeforeSyn.get(ns)?.includes(tbl)) await inNetns(ns, ['nft', 'delete', ...tbl.split(' ')]);
      }
    }
  });

  await t.test('no log line shows ztunnel capturing its own upstream', async (t) => {
    for (const n of tb.nodes) {
      for (const l of tb.ztunnelLog(n.name)) {
        t.notOk(
          [15001, 15006, 15008].includes(Number(l.originalDst.split(':').pop())),
          `${l.direction} to ${l.originalDst} is not to a ztunnel port`,
        );
        t.notOk(
          l.direction === 'outbound' && tb.ztunnels.some((z) => ipOf(l.source) === z.ip),
          'no outbound capture of a ztunnel socket',
        );
      }
    }
  });

  await t.test('removal is exact and down leaves nothing', async (t) => {
    await removePath(tb, backend);
    await removePath(tb, backend);
    t.same(
      await Promise.all(touched.map((ns) => netfilter(ns))),
      savesBefore,
      'iptables-save, ip6tables-save, nft ruleset of every touched netns as before install',
    );
    const gone = await curl(tb, 'app1-node1', ip('app2-node1'), PORT);
    t.equal(
      gone.body,
      `hello from app2-node1 peer=${ip('app1-node1')} path=/\n`,
      'direct again once the path is removed',
    );
    await tb.down();
    t.same(await snapshot(prefix), before, 'netns list, cgroup tree, root iptables-save, bpffs, ipsets as before');
  });
}
