// The baseline's rules are Istio's, complete: for every case of istio-cni's own golden tests
// (test/baseline/golden/, copied verbatim from istio/istio), v4 and v6, iptables and nftables:
//  1. the text we generate is the golden text, line for line (order and spelling included);
//  2. in the kernel: the golden loaded as is into one netns and ours installed by the baseline's
//     install() into another give the same iptables-save, ip6tables-save and nft list ruleset
//     (counters aside), plus the 0x111 policy rule and local route (and v6 twins) Istio adds by netlink;
//  3. remove() leaves the netns exactly as it was before install (rules, tables, sets, ip rules, routes).
import t, { type Test } from 'tap';
import { readFileSync } from 'node:fs';
import { run, inNetns } from '../../src/testbed/run.ts';
import {
  hostIptables,
  hostNft,
  hostNftSets,
  inpodIptables,
  inpodNft,
  restoreText,
  ISTIO_DEFAULTS,
  NO_OVERRIDES,
  type Backend,
  type IstioConfig,
  type PodOverrides,
} from '../../src/baseline/istio-rules.ts';
import { inpodNodeRules, inpodPodRules, updateProbeSet } from '../../src/baseline/inpod.ts';
import { install, nftRuleset, nftTables, remove, type NetnsRules } from '../../src/baseline/ruleset.ts';
import { netnsState, type NetnsState } from './netns-state.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { snapshot } from '../testbed/leak-check.ts';

const GOLDEN = new URL('./golden/', import.meta.url);
const golden = (backend: Backend, name: string): string =>
  readFileSync(new URL(`${backend}/${name}.golden`, GOLDEN), 'utf8');

/** Istio's test configuration (cni/pkg/iptables/iptables_test.go constructTestConfig and the cases). */
const TEST_PROBE_V6 = 'e9ac:1e77:90ca:399f:4d6d:ece2:2f9b:3164';
const cfgFor = (dns: boolean, ipv6: boolean): IstioConfig => ({
  ...ISTIO_DEFAULTS,
  dns,
  ipv6,
  probeV6: TEST_PROBE_V6,
  kubeletUid: 1000,
});
const VIRT = ['fake1s0f0', 'fake1s0f1'];
const CASES: { name: string; dns: boolean; o: PodOverrides }[] = [
  { name: 'default', dns: true, o: NO_OVERRIDES },
  { name: 'ingress', dns: false, o: { ...NO_OVERRIDES, ingress: true } },
  { name: 'virtual_interfaces', dns: false, o: { ...NO_OVERRIDES, virtualInterfaces: VIRT } },
  { name: 'ingress_and_virtual_interfaces', dns: false, o: { ingress: true, dns: undefined, virtualInterfaces: VIRT } },
  { name: 'dns_pod_enabled_and_off_globally', dns: false, o: { ...NO_OVERRIDES, dns: true } },
  { name: 'dns_pod_disabled_and_on_globally', dns: true, o: { ...NO_OVERRIDES, dns: false } },
];

/** The golden's iptables-restore blocks: the first two lines are istio-cni's state probes (*-save). */
function iptablesGolden(text: string): { v4: string; v6: string } {
  const lines = text.split('\n').filter((l) => l !== 'iptables-save' && l !== 'ip6tables-save' && l !== '');
  // The v6 restore starts where a table header repeats.
  const seen = new Set<string>();
  let split = lines.length;
  for (const [i, l] of lines.entries()) {
    if (!l.startsWith('* ')) continue;
    if (seen.has(l)) {
      split = i;
      break;
    }
    seen.add(l);
  }
  const join = (ls: string[]): string => (ls.length ? ls.join('\n') + '\n' : '');
  return { v4: join(lines.slice(0, split)), v6: join(lines.slice(split)) };
}

const nftLines = (text: string): string[] => text.split('\n').filter((l) => l !== '');

t.test('generated text is the golden text, line for line', async (t) => {
  for (const c of CASES) {
    for (const ipv6 of [false, true]) {
      const file = `${c.name}${ipv6 ? '_ipv6' : ''}`;
      const cfg = cfgFor(c.dns, ipv6);
      const ipt = inpodIptables(cfg, c.o);
      t.same(
        restoreText(ipt.v4) + restoreText(ipt.v6),
        iptablesGolden(golden('iptables', file)).v4 + iptablesGolden(golden('iptables', file)).v6,
        `iptables ${file}`,
      );
      t.same(inpodNft(cfg, c.o), nftLines(golden('nftables', file)), `nftables ${file}`);
    }
  }
  for (const ipv6 of [false, true]) {
    const file = `hostprobe${ipv6 ? '_ipv6' : ''}`;
    // istio-cni's host test sets the real v6 probe address for iptables, keeps the test one for nft.
    const h = hostIptables({ ...cfgFor(true, ipv6), probeV6: ISTIO_DEFAULTS.probeV6 });
    const g = iptablesGolden(golden('iptables', file));
    t.same(restoreText(h.v4) + restoreText(h.v6), g.v4 + g.v6, `iptables ${file}`);
    t.same(hostNft(cfgFor(true, ipv6)), nftLines(golden('nftables', file)), `nftables ${file}`);
  }
});

t.test('in the kernel: ours == golden, and removal restores the netns', async (t) => {
  const prefix = testPrefix();
  const before = await snapshot(prefix);
  const gold = `${prefix}-gold`;
  const ours = `${prefix}-ours`;
  const path = (n: string): string => `/run/netns/${n}`;
  for (const n of [gold, ours]) {
    await run(['ip', 'netns', 'add', n]);
    await run(['ip', '-n', n, 'link', 'set', 'lo', 'up']);
  }
  t.teardown(async () => {
    for (const n of [gold, ours]) await run(['ip', 'netns', 'del', n], { check: false });
  });

  const state = (ns: string): Promise<NetnsState> => netnsState(path(ns));
  const fresh = await state(ours);
  const resetGold = async (): Promise<void> => {
    await inNetns(path(gold), ['nft', 'flush', 'ruleset']);
    await inNetns(path(gold), ['ipset', 'destroy'], { check: false });
  };
  const loadGold = async (backend: Backend, file: string, prelude: readonly string[] = []): Promise<void> => {
    if (backend === 'nftables') {
      await inNetns(path(gold), ['nft', '-f', '-'], {
        input: [...prelude, ...nftLines(golden('nftables', file))].join('\n') + '\n',
      });
      return;
    }
    const g = iptablesGolden(golden('iptables', file));
    await inNetns(path(gold), ['iptables-restore', '--noflush'], { input: g.v4 });
    if (g.v6) await inNetns(path(gold), ['ip6tables-restore', '--noflush'], { input: g.v6 });
  };

  /** Installs `rules` in ours and checks the netfilter state equals the golden netns's; returns ours. */
  const installAndCompare = async (
    t: Test,
    rules: NetnsRules,
  ): Promise<{ tablesBefore: string[]; o: NetnsState; g: NetnsState }> => {
    const tablesBefore = await nftTables(path(ours));
    await install(rules);
    const [g, o] = [await state(gold), await state(ours)];
    t.equal(o.iptables, g.iptables, 'iptables-save');
    t.equal(o.ip6tables, g.ip6tables, 'ip6tables-save');
    t.equal(o.nft, g.nft, 'nft list ruleset');
    return { tablesBefore, o, g };
  };

  for (const backend of ['iptables', 'nftables'] as const) {
    for (const c of CASES) {
      for (const ipv6 of [false, true]) {
        const file = `${c.name}${ipv6 ? '_ipv6' : ''}`;
        await t.test(`${backend} ${file}`, async (t) => {
          await resetGold();
          await loadGold(backend, file);
          const rules = inpodPodRules(path(ours), backend, { cfg: cfgFor(c.dns, ipv6), overrides: c.o });
          const { tablesBefore, o } = await installAndCompare(t, rules);
          t.match(
            o.rules,
            /^32764:\tfrom all fwmark 0x111\/0xfff lookup 100 *$/m,
            'ip rule fwmark 0x111/0xfff pref 32764 lookup 100',
          );
          t.match(
            o.routes,
            /^local default dev lo table 100 scope host *$/m,
            'ip route local 0.0.0.0/0 dev lo table 100',
          );
          const v6 = (await run(['ip', '-n', ours, '-6', 'rule', 'show'])).stdout;
          // An absent table 100 is an error for `ip -6 route show table 100`: empty output then.
          const v6routes = (await run(['ip', '-n', ours, '-6', 'route', 'show', 'table', '100'], { check: false }))
            .stdout;
          if (ipv6) {
            t.match(v6, /^32764:\tfrom all fwmark 0x111\/0xfff lookup 100 *$/m, 'ip -6 rule twin');
            t.match(v6routes, /^local default dev lo /m, 'ip -6 route local ::/0 dev lo table 100');
          } else {
            t.notMatch(v6, /fwmark 0x111/, 'no v6 rule without IPv6');
            t.equal(v6routes.trim(), '', 'no v6 route without IPv6');
          }
          await remove(rules, tablesBefore);
          await remove(rules, tablesBefore);
          t.same(await state(ours), fresh, 'removal (twice) leaves the netns as it was');
        });
      }
    }
  }

  for (const backend of ['iptables', 'nftables'] as const) {
    for (const ipv6 of [false, true]) {
      const file = `hostprobe${ipv6 ? '_ipv6' : ''}`;
      await t.test(`${backend} ${file} (node netns)`, async (t) => {
        await resetGold();
        const cfg =
          backend === 'iptables' ? { ...cfgFor(true, ipv6), probeV6: ISTIO_DEFAULTS.probeV6 } : cfgFor(true, ipv6);
        if (backend === 'iptables') {
          // The golden's rules name the probe sets; istio-cni creates them (netlink) before the rules.
          for (const f of ipv6 ? [4, 6] : [4]) {
            await inNetns(path(gold), [
              'ipset',
              'create',
              `istio-inpod-probes-v${f}`,
              'hash:ip',
              'family',
              f === 4 ? 'inet' : 'inet6',
              'comment',
            ]);
          }
          await loadGold(backend, file);
        } else {
          await loadGold(backend, file, hostNftSets(cfg));
        }
        const rules = inpodNodeRules(path(ours), [], backend, cfg);
        const { tablesBefore, o, g } = await installAndCompare(t, rules);
        t.equal(o.ipsets, g.ipsets, 'ipsets');

        // Pods come and go: one entry per pod IP, tagged with its UID.
        const pods = [{ ip: '198.19.1.5', uid: 'uid-a' }, ...(ipv6 ? [{ ip: 'fd00:a3bf::5', uid: 'uid-b' }] : [])];
        for (const p of pods) await updateProbeSet(path(ours), backend, p, false);
        const listed =
          backend === 'iptables' ? (await inNetns(path(ours), ['ipset', 'list'])).stdout : await nftRuleset(path(ours));
        for (const p of pods)
          t.match(
            listed,
            new RegExp(`${p.ip.replaceAll('.', '\\.')} comment "${p.uid}"`),
            `${p.ip} in the probe set, tagged ${p.uid}`,
          );
        for (const p of pods) await updateProbeSet(path(ours), backend, p, true);
        for (const p of pods) await updateProbeSet(path(ours), backend, p, true);
        const after =
          backend === 'iptables' ? (await inNetns(path(ours), ['ipset', 'list'])).stdout : await nftRuleset(path(ours));
        for (const p of pods) t.notOk(after.includes(p.ip), `${p.ip} gone (deleting twice is fine)`);

        await remove(rules, tablesBefore);
        t.same(await state(ours), fresh, 'removal leaves the node netns as it was');
      });
    }
  }

  await t.test('nothing left on the machine', async (t) => {
    for (const n of [gold, ours]) await run(['ip', 'netns', 'del', n]);
    t.same(await snapshot(prefix), before);
  });
});
