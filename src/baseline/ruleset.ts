// Installing and removing a set of iptables rules, ipsets, policy rules and routes in one netns,
// exactly: removal deletes what installation added and nothing else (rules by their spec, our own
// chains, our ipsets, and the nf_tables tables iptables-nft had to create if they were absent before
// and are empty again), so iptables-save of the netns is the same before install and after removal.
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

export interface IpsetSpec {
  readonly name: string;
  readonly type: string;
  readonly members: readonly string[];
}

export interface NetnsRules {
  readonly netnsPath: string;
  readonly ipsets: readonly IpsetSpec[];
  readonly iptables: readonly IptablesTable[];
  /** `ip rule add` arguments, e.g. "fwmark 0x111/0xfff pref 32764 lookup 100" (removed with `ip rule del` + same args). */
  readonly ipRules: readonly string[];
  /** `ip route add` arguments (removed with `ip route del` + same args). */
  readonly ipRoutes: readonly string[];
}

/** Installing or removing the iptables path failed; names the netns and the step. */
export class BaselineError extends AmbpfError {
  override readonly name: string = 'BaselineError';
  constructor(step: string, netnsPath: string, cause: unknown) {
    super(`could not ${step} in ${netnsPath}: ${cause instanceof Error ? cause.message : String(cause)}`, { step, netnsPath }, { cause });
  }
}

export function installText(tables: readonly IptablesTable[]): string {
  const out: string[] = [];
  for (const t of tables) {
    out.push(`*${t.table}`, ...t.chains.map((c) => `:${c} - [0:0]`), ...t.rules, 'COMMIT');
  }
  return out.join('\n') + '\n';
}

/** Deletes our rules in builtin chains by spec, then flushes and deletes our own chains. */
export function removeText(tables: readonly IptablesTable[]): string {
  const out: string[] = [];
  for (const t of tables) {
    const owned = new Set(t.chains);
    const builtin = t.rules.filter((r) => !owned.has(r.split(' ')[1] ?? ''));
    out.push(`*${t.table}`, ...builtin.reverse().map((r) => r.replace(/^-A /, '-D ')), ...t.chains.map((c) => `-F ${c}`), ...t.chains.map((c) => `-X ${c}`), 'COMMIT');
  }
  return out.join('\n') + '\n';
}

/** nf_tables tables of a netns ("table ip nat"…): removal deletes the ones install made, once empty. */
export async function nftTables(netnsPath: string): Promise<string[]> {
  // With iptables-legacy there are no nf_tables tables to account for; with iptables-nft the empty
  // tables it creates can only be deleted with nft, so a missing nft would leave them behind silently.
  const version = (await inNetns(netnsPath, ['iptables', '--version'], { check: false })).stdout;
  if (!version.includes('nf_tables')) return [];
  const r = await inNetns(netnsPath, ['nft', 'list', 'tables'], { check: false });
  if (r.code !== 0) {
    throw new Error(`iptables is the nf_tables variant but 'nft list tables' failed (install the Debian package nftables): ${r.stderr.trim()}`);
  }
  return r.stdout.split('\n').map((l) => l.trim()).filter((l) => l.startsWith('table '));
}

export async function install(rules: NetnsRules): Promise<void> {
  let step = 'create ipsets';
  try {
    for (const s of rules.ipsets) {
      await inNetns(rules.netnsPath, ['ipset', 'create', s.name, s.type]);
      for (const m of s.members) await inNetns(rules.netnsPath, ['ipset', 'add', s.name, m]);
    }
    step = 'load iptables rules';
    await inNetns(rules.netnsPath, ['iptables-restore', '--noflush'], { input: installText(rules.iptables) });
    step = 'add policy rules';
    for (const r of rules.ipRules) await inNetns(rules.netnsPath, ['ip', 'rule', 'add', ...r.split(' ')]);
    step = 'add routes';
    for (const r of rules.ipRoutes) await inNetns(rules.netnsPath, ['ip', 'route', 'add', ...r.split(' ')]);
  } catch (e) {
    throw new BaselineError(step, rules.netnsPath, e);
  }
}

/** Removes what install added; tolerant of parts already gone (idempotent), strict about leftovers. */
export async function remove(rules: NetnsRules, tablesBefore: readonly string[]): Promise<void> {
  const ns = rules.netnsPath;
  try {
    for (const r of rules.ipRoutes) await inNetns(ns, ['ip', 'route', 'del', ...r.split(' ')], { check: false });
    for (const r of rules.ipRules) await inNetns(ns, ['ip', 'rule', 'del', ...r.split(' ')], { check: false });
    const save = (await inNetns(ns, ['iptables-save'])).stdout;
    // Only what is still there: removal after a partial install (or twice) must not fail.
    const present = rules.iptables.map((t) => ({
      table: t.table,
      chains: t.chains.filter((c) => save.includes(`:${c} `)),
      rules: t.rules.filter((r) => save.includes(`\n${r}\n`)),
    }));
    await inNetns(ns, ['iptables-restore', '--noflush'], { input: removeText(present) });
    for (const s of rules.ipsets) await inNetns(ns, ['ipset', 'destroy', s.name], { check: false });
    for (const t of await nftTables(ns)) {
      if (tablesBefore.includes(t) || !t.startsWith('table ip ')) continue;
      const name = t.slice('table ip '.length);
      const rest = (await inNetns(ns, ['iptables-save', '-t', name], { check: false })).stdout;
      if (!/^-A /m.test(rest) && !/^:(?!PREROUTING |INPUT |FORWARD |OUTPUT |POSTROUTING )/m.test(rest)) {
        await inNetns(ns, ['nft', 'delete', 'table', 'ip', name], { check: false });
      }
    }
  } catch (e) {
    throw new BaselineError('remove the iptables path', ns, e);
  }
}

/** Normalized iptables-save of a netns (comments and counters dropped), for before/after comparisons. */
export async function iptablesSave(netnsPath: string | undefined): Promise<string> {
  const r = netnsPath ? await inNetns(netnsPath, ['iptables-save']) : await run(['iptables-save']);
  return r.stdout
    .split('\n')
    .filter((l) => !l.startsWith('#'))
    .map((l) => l.replace(/ \[\d+:\d+\]$/, ''))
    .join('\n');
}
