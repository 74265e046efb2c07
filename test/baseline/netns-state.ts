// Everything the baseline may change in a netns, in comparable form: iptables-save, ip6tables-save,
// nft list ruleset (counters aside), ipsets (hash seeds aside), ip rules and routes of both families.
// Tests compare it before install and after removal, and between a golden netns and ours.
import { inNetns } from '../../src/testbed/run.ts';
import { iptablesSave, nftRuleset } from '../../src/baseline/ruleset.ts';

export type NetnsState = Record<'iptables' | 'ip6tables' | 'nft' | 'ipsets' | 'rules' | 'routes', string>;

export async function netnsState(netnsPath: string): Promise<NetnsState> {
  const ip = async (...args: string[]): Promise<string> => (await inNetns(netnsPath, ['ip', ...args])).stdout;
  const [iptables, ip6tables, nft, ipsets, rules4, rules6, routes4, routes6] = await Promise.all([
    iptablesSave(netnsPath, 4),
    iptablesSave(netnsPath, 6),
    nftRuleset(netnsPath),
    inNetns(netnsPath, ['ipset', 'list']).then((r) => r.stdout),
    ip('rule', 'show'),
    ip('-6', 'rule', 'show'),
    ip('route', 'show', 'table', 'all'),
    ip('-6', 'route', 'show', 'table', 'all'),
  ]);
  // A set's hash seed, memory size and member order differ between two identical sets.
  const sets = ipsets
    .replace(/ initval 0x[0-9a-f]+/g, '')
    .replace(/^Size in memory: \d+$/gm, '')
    .replace(
      /^Members:\n((?:.+\n?)*)/gm,
      (_, members: string) => `Members:\n${members.trimEnd().split('\n').sort().join('\n')}\n`,
    );
  // Routes the kernel makes by itself (addresses, IPv6 link-local once DAD ends) come and go on their own.
  const routes = (routes4 + routes6)
    .split('\n')
    .filter((l) => !/ proto kernel /.test(l))
    .join('\n');
  return { iptables, ip6tables, nft, ipsets: sets, rules: rules4 + rules6, routes };
}
