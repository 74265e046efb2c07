// Undo what the ledger (sysctl.ts) says ambpf changed outside bpffs: every sysctl back to the value
// found, every rule/route it added removed, in the netns where it was made. What cannot be undone now
// (a netns that is not reachable by any path) stays in the ledger and is reported.
import { execFileSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { withNetns } from '../libbpf/index.ts';
import { policyRouteDelCommands } from './datapath-ztunnel.ts';
import { setOrigSrcReturnPath } from './return-path.ts';
import { readLedger, replaceLedger, writeNetSysctl, type LedgerEntry } from './sysctl.ts';

export interface LedgerUndoReport {
  /** "net.ipv4.tcp_fwmark_accept=0 in /proc/123/ns/net", ... */
  readonly sysctls: string[];
  readonly routes: string[];
  /** Entries whose netns is gone: nothing of them is left behind. */
  readonly gone: string[];
  /** Entries that could not be undone (kept in the ledger for the next attempt), with the reason. */
  readonly failed: string[];
}

/** Finds a path naming the netns with this inode (status/targets.ts netnsPathByIno), or null. */
export type NetnsFinder = (ino: number) => string | null;

/** A path to the entry's netns now: the recorded one if it still names that netns, else a search. */
function netnsOf(e: LedgerEntry, find: NetnsFinder | undefined): string | null {
  try {
    if (statSync(e.netnsPath).ino === e.netnsIno) return e.netnsPath;
  } catch {
    // the recorded path is gone (the process exited): search by inode
  }
  return find?.(e.netnsIno) ?? null;
}

const sysctlName = (rel: string): string => `net.${rel.replace(/\//g, '.')}`;

/** ztunnel's policy rules and local routes (datapath-ztunnel.ts installPolicyRoute), each removed if there. */
function removePolicyRouteSync(netnsPath: string, ifname: string, table: number, pref: number): void {
  withNetns(netnsPath, () => {
    for (const args of policyRouteDelCommands({ ifname, table, pref })) {
      try {
        execFileSync('ip', args, { stdio: 'ignore' });
      } catch {
        // already gone (or no IPv6 here)
      }
    }
  });
}

/** Synchronous (uninstallDatapath is): a handful of `ip` runs at most. */
export function undoLedger(ledger: string, find?: NetnsFinder): LedgerUndoReport {
  const report: LedgerUndoReport = { sysctls: [], routes: [], gone: [], failed: [] };
  const keep: LedgerEntry[] = [];
  const entries = readLedger(ledger);
  // Sysctls first: the return path's own undo then finds none of them left to restore.
  const ordered = [...entries.filter((e) => e.kind === 'sysctl'), ...entries.filter((e) => e.kind !== 'sysctl')];
  for (const e of ordered) {
    const what =
      e.kind === 'sysctl'
        ? `${sysctlName(e.rel)}=${e.found}`
        : e.what === 'ztunnel-policy'
          ? `ip rule pref ${e.pref} iif ${e.ifname} lookup ${e.table} + local route in table ${e.table}`
          : 'ip rule fwmark 0x1000 + table 41919';
    const path = netnsOf(e, find);
    if (path === null) {
      report.gone.push(`${what} (netns ${e.netnsIno} is gone)`);
      continue;
    }
    try {
      if (e.kind === 'sysctl') {
        withNetns(path, () => writeNetSysctl(e.rel, e.found));
        report.sysctls.push(`${what} in ${path}`);
      } else if (e.what === 'ztunnel-policy') {
        removePolicyRouteSync(path, e.ifname, e.table, e.pref);
        report.routes.push(`${what} in ${path}`);
      } else {
        replaceLedger(ledger, [...keep, e]); // its own undo reads and updates the ledger
        setOrigSrcReturnPath(path, false, ledger);
        report.routes.push(`${what} in ${path}`);
      }
    } catch (err) {
      keep.push(e);
      report.failed.push(`${what} in ${path}: ${(err as Error).message}`);
    }
  }
  replaceLedger(ledger, keep);
  return report;
}
