// Installing and removing a set of iptables/ip6tables rules, nftables tables, ipsets, policy rules
// and routes in one netns, exactly: removal deletes what installation added and nothing else (rules
// by their spec, our own chains, our nft tables and ipsets, and the nf_tables tables iptables-nft had
// to create if they were absent before and are empty again), so iptables-save, ip6tables-save and
// nft list ruleset of the netns are the same before install and after removal.
import { inNetns, run } from '../testbed/run.ts';
import { AmbpfError } from '../errors.ts';

export type IptTable = 'mangle' | 'nat' | 'raw';

export interface IptablesTable {
  readonly table: IptTable;
  /** Chains this rule set owns (created on install, flushed and deleted on removal). */
  readonly chains: readonly string[];
  /** Rules as iptables-save `-A CHAIN …` lines, in order. */
  readonly rules: readonly string[];
}

export interface IpsetMember {
  readonly ip: string;
  /** istio-cni tags each probe-set entry with the pod's UID. */
  readonly comment?: string;
}

export interface IpsetSpec {
  readonly name: string;
  readonly type: string;
  /** `family inet6` for v6 sets (default inet). */
  readonly family?: 'inet' | 'inet6';
  /** Created with `comment` support. */
  readonly comments?: boolean;
  readonly members: readonly IpsetMember[];
}

/** Native nftables: a script for `nft -f -` and the tables it owns (removed whole). */
export interface NftSpec {
  readonly script: readonly string[];
  /** "inet istio-ambient-nat", … */
  readonly tables: readonly string[];
}

export interface NetnsRules {
  readonly netnsPath: string;
  readonly ipsets: readonly IpsetSpec[];
  readonly iptables: readonly IptablesTable[];
  readonly ip6tables: readonly IptablesTable[];
  readonly nft?: NftSpec;
  /**
   * `ip rule add` arguments, e.g. "fwmark 0x111/0xfff pref 32764 lookup 100" (removed with `ip rule del`
   * + same args); a leading "-6 " makes it `ip -6 rule`.
   */
  readonly ipRules: readonly string[];
  /** `ip route add` arguments (removed with `ip route del` + same args); "-6 " as for ipRules. */
  readonly ipRoutes: readonly string[];
}

/** Installing or removing the iptables path failed; names the netns and the step. */
export class BaselineError extends AmbpfError {
  override readonly name: string = 'BaselineError';
  constructor(step: string, netnsPath: string, cause: unknown) {
    super(
      `could not ${step} in ${netnsPath}: ${cause instanceof Error ? cause.message : String(cause)}`,
      { step, netnsPath },
      { cause },
    );
  }
}

export function installText(tables: readonly IptablesTable[]): string {
  const out: string[] = [];
  for (const t of tables) {
    out.push(`*${t.table}`, ...t.chains.map((c) => `:${c} - [0:0]`), ...t.rules, 'COMMIT');
  }
  return out.join('\n') + '\n';
}

/** A rule as iptables-save shows it: `-I CHAIN N …` is listed as `-A CHAIN …`. */
export function appendForm(rule: string): string {
  return rule.replace(/^-I (\S+) \d+ /, '-A $1 ');
}

/** Deletes our rules in builtin chains by spec, then flushes and deletes our own chains. */
export function removeText(tables: readonly IptablesTable[]): string {
  const out: string[] = [];
  for (const t of tables) {
    const owned = new Set(t.chains);
    const builtin = t.rules.filter((r) => !owned.has(r.split(' ')[1] ?? ''));
    out.push(
      `*${t.table}`,
      ...builtin.reverse().map((r) => appendForm(r).replace(/^-A /, '-D ')),
      ...t.chains.map((c) => `-F ${c}`),
      ...t.chains.map((c) => `-X ${c}`),
      'COMMIT',
    );
  }
  return out.join('\n') + '\n';
}

/** nf_tables tables of a netns ("table ip nat"…): removal deletes the ones install made, once empty. */
export async function nftTables(netnsPath: string): Promise<string[]> {
  // With iptables-legacy there are no nf_tables tables to account for; with iptables-nft the empty
  // tables it creates can only be deleted with nft, so a missing nft would leave them behind silently.
  const version = (await inNetns(netnsPath, ['iptables', '--version'], { check: false })).stdout;
  if (!version.includes('nf_tables')) return [];
  return nftListTables(netnsPath);
}

async function nftListTables(netnsPath: string): Promise<string[]> {
  const r = await inNetns(netnsPath, ['nft', 'list', 'tables'], { check: false });
  if (r.code !== 0) {
    throw new Error(`'nft list tables' failed (install the Debian package nftables): ${r.stderr.trim()}`);
  }
  return r.stdout
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.startsWith('table '));
}

/** `ip <object> <verb> <spec>`, where a spec starting with "-6 " is the v6 twin. */
function ipArgv(object: 'rule' | 'route', verb: 'add' | 'del', spec: string): string[] {
  const v6 = spec.startsWith('-6 ');
  return ['ip', ...(v6 ? ['-6'] : []), object, verb, ...(v6 ? spec.slice(3) : spec).split(' ')];
}

const FAMILIES = [
  { tables: (r: NetnsRules) => r.iptables, restore: 'iptables-restore', save: 'iptables-save', nftFamily: 'ip' },
  { tables: (r: NetnsRules) => r.ip6tables, restore: 'ip6tables-restore', save: 'ip6tables-save', nftFamily: 'ip6' },
] as const;

export async function install(rules: NetnsRules): Promise<void> {
  const ns = rules.netnsPath;
  let step = 'create ipsets';
  try {
    for (const s of rules.ipsets) {
      await inNetns(ns, [
        'ipset',
        'create',
        s.name,
        s.type,
        ...(s.family ? ['family', s.family] : []),
        ...(s.comments ? ['comment'] : []),
      ]);
      for (const m of s.members)
        await inNetns(ns, ['ipset', 'add', s.name, m.ip, ...(m.comment !== undefined ? ['comment', m.comment] : [])]);
    }
    for (const f of FAMILIES) {
      step = `load ${f.restore} rules`;
      const tables = f.tables(rules);
      if (tables.length > 0) await inNetns(ns, [f.restore, '--noflush'], { input: installText(tables) });
    }
    if (rules.nft) {
      step = 'load nftables rules';
      await inNetns(ns, ['nft', '-f', '-'], { input: rules.nft.script.join('\n') + '\n' });
    }
    step = 'add policy rules';
    for (const r of rules.ipRules) await inNetns(ns, ipArgv('rule', 'add', r));
    step = 'add routes';
    for (const r of rules.ipRoutes) await inNetns(ns, ipArgv('route', 'add', r));
  } catch (e) {
    throw new BaselineError(step, ns, e);
  }
}

/** iptables-save output as table -> its lines (`:CHAIN …`, `-A …`). */
function saveByTable(save: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let cur: string[] | undefined;
  for (const line of save.split('\n')) {
    if (line.startsWith('*')) out.set(line.slice(1).trim(), (cur = []));
    else if (cur && (line.startsWith(':') || line.startsWith('-A '))) cur.push(line);
  }
  return out;
}

/** An iptables-nft table holds nothing of anyone's: no rules, no user chains, every base chain ACCEPT. */
function emptyTable(save: string): boolean {
  return (
    !/^-A /m.test(save) &&
    !/^:(?!PREROUTING |INPUT |FORWARD |OUTPUT |POSTROUTING )/m.test(save) &&
    !/^:\S+ (DROP|REJECT)/m.test(save)
  );
}

/**
 * Removes what install added; tolerant of parts already gone (idempotent), strict about leftovers.
 * `tablesBefore` (nftTables() before install) names the nf_tables tables that were there already:
 * the empty ones iptables-nft created are deleted only if absent from it (undefined: deleted when empty).
 */
export async function remove(rules: NetnsRules, tablesBefore: readonly string[] | undefined): Promise<void> {
  const ns = rules.netnsPath;
  try {
    for (const r of rules.ipRoutes) await inNetns(ns, ipArgv('route', 'del', r), { check: false });
    for (const r of rules.ipRules) await inNetns(ns, ipArgv('rule', 'del', r), { check: false });
    for (const f of FAMILIES) {
      const tables = f.tables(rules);
      if (tables.length === 0) continue;
      const save = saveByTable((await inNetns(ns, [f.save])).stdout);
      // Only what is still there: removal after a partial install (or twice) must not fail. A rule
      // there twice (an install over the leftovers of a crashed agent) is deleted twice.
      const present = tables.map((t) => {
        const lines = save.get(t.table) ?? [];
        return {
          table: t.table,
          chains: t.chains.filter((c) => lines.some((l) => l.startsWith(`:${c} `))),
          rules: t.rules.flatMap((r) => lines.filter((l) => l === appendForm(r)).map(() => r)),
        };
      });
      await inNetns(ns, [f.restore, '--noflush'], { input: removeText(present) });
    }
    if (rules.nft) {
      const now = await nftListTables(ns);
      for (const t of rules.nft.tables)
        if (now.includes(`table ${t}`)) await inNetns(ns, ['nft', 'delete', 'table', ...t.split(' ')]);
    }
    for (const s of rules.ipsets) await inNetns(ns, ['ipset', 'destroy', s.name], { check: false });
    for (const t of await nftTables(ns)) {
      for (const f of FAMILIES) {
        if (tablesBefore?.includes(t) || !t.startsWith(`table ${f.nftFamily} `) || f.tables(rules).length === 0)
          continue;
        const name = t.slice(`table ${f.nftFamily} `.length);
        const rest = (await inNetns(ns, [f.save, '-t', name], { check: false })).stdout;
        if (emptyTable(rest)) await inNetns(ns, ['nft', 'delete', 'table', f.nftFamily, name], { check: false });
      }
    }
  } catch (e) {
    throw new BaselineError('remove the rules', ns, e);
  }
}

/** Normalized iptables-save (or ip6tables-save) of a netns (comments and counters dropped), for comparisons. */
export async function iptablesSave(netnsPath: string | undefined, family: 4 | 6 = 4): Promise<string> {
  const tool = family === 4 ? 'iptables-save' : 'ip6tables-save';
  const r = netnsPath ? await inNetns(netnsPath, [tool]) : await run([tool]);
  return r.stdout
    .split('\n')
    .filter((l) => !l.startsWith('#'))
    .map((l) => l.replace(/ \[\d+:\d+\]$/, ''))
    .join('\n');
}

/** `nft list ruleset` of a netns with counters zeroed, for comparisons. */
export async function nftRuleset(netnsPath: string): Promise<string> {
  const r = await inNetns(netnsPath, ['nft', 'list', 'ruleset']);
  return r.stdout.replace(/counter packets \d+ bytes \d+/g, 'counter packets 0 bytes 0');
}
