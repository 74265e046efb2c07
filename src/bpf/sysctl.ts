// Network sysctls of the netns the calling thread is in. /proc/sys/net follows the netns of the
// thread that opens it, so callers wrap these in withNetns. In an unprivileged container /proc/sys
// is read-only; the DaemonSet bind-mounts the node's /proc/sys/net elsewhere (writable, and still
// following the thread's netns) and names it in AMBPF_PROC_SYS_NET.
import { mkdirSync, readFileSync, renameSync, rmSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

export function netSysctlPath(rel: string): string {
  return `${process.env['AMBPF_PROC_SYS_NET'] ?? '/proc/sys/net'}/${rel}`;
}

/** e.g. writeNetSysctl('ipv4/conf/eth0/arp_ignore', '1') */
export function writeNetSysctl(rel: string, value: string): void {
  writeFileSync(netSysctlPath(rel), value);
}

export function readNetSysctl(rel: string): string {
  return readFileSync(netSysctlPath(rel), 'utf8').trim();
}

/**
 * What ambpf changed outside bpffs, so that `ambpf uninstall` (and releasing a pod) puts back what it
 * found rather than a guess: every sysctl with the value it had before ambpf first wrote it, and every
 * routing rule/route it added, each with the netns it is in (inode, and a path that named it then).
 * A JSON file next to the state file (one per bpffs), rewritten atomically on each change; the first
 * value found for a sysctl is kept however often ambpf writes it again (a restarted loader must not
 * record its own earlier write as "found").
 */
export type LedgerEntry =
  | { kind: 'sysctl'; netnsIno: number; netnsPath: string; rel: string; found: string }
  | {
      kind: 'route';
      netnsIno: number;
      netnsPath: string;
      what: 'ztunnel-policy';
      ifname: string;
      table: number;
      pref: number;
    }
  | { kind: 'route'; netnsIno: number; netnsPath: string; what: 'inpod-return' };

/** The ledger of a bpffs directory, next to the loader's state file: <dir>/changes<bpffs with / as _>.json. */
export function ledgerPath(bpffs: string, dir = process.env['AMBPF_LEDGER_DIR'] ?? '/run/ambpf'): string {
  return join(dir, `changes${bpffs.replace(/\//g, '_')}.json`);
}

export function readLedger(path: string): LedgerEntry[] {
  try {
    const v = JSON.parse(readFileSync(path, 'utf8')) as unknown;
    return Array.isArray(v) ? (v as LedgerEntry[]) : [];
  } catch {
    return [];
  }
}

function writeLedger(path: string, entries: readonly LedgerEntry[]): void {
  if (entries.length === 0) {
    rmSync(path, { force: true });
    try {
      rmdirSync(dirname(path)); // only when empty: nothing of ours left there
    } catch {
      // the state file or another ledger is there
    }
    return;
  }
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(entries, null, 1) + '\n');
  renameSync(tmp, path);
}

/** The inode of the netns the calling thread is in. */
export function currentNetnsIno(): number {
  return statSync('/proc/thread-self/ns/net').ino;
}

const sameSysctl = (e: LedgerEntry, ino: number, rel: string): boolean =>
  e.kind === 'sysctl' && e.netnsIno === ino && e.rel === rel;

/**
 * Set a network sysctl of the calling thread's netns (`netnsPath` names it for uninstall), recording
 * the value found the first time. No-op (nothing recorded) when it already has the value and no record.
 */
export function changeNetSysctl(ledger: string, netnsPath: string, rel: string, value: string): void {
  const found = readNetSysctl(rel);
  const ino = currentNetnsIno();
  const entries = readLedger(ledger);
  if (found !== value && !entries.some((e) => sameSysctl(e, ino, rel))) {
    writeLedger(ledger, [...entries, { kind: 'sysctl', netnsIno: ino, netnsPath, rel, found }]);
  }
  if (found !== value) writeNetSysctl(rel, value);
}

/** Put back the value found for `rel` in the calling thread's netns (and forget it); the value put back, if any. */
export function restoreNetSysctl(ledger: string, rel: string): string | undefined {
  const ino = currentNetnsIno();
  const entries = readLedger(ledger);
  const e = entries.find((x) => sameSysctl(x, ino, rel));
  if (!e || e.kind !== 'sysctl') return undefined;
  writeNetSysctl(rel, e.found);
  writeLedger(
    ledger,
    entries.filter((x) => x !== e),
  );
  return e.found;
}

/** Record a rule/route ambpf added (idempotent). */
export function recordRoute(ledger: string, entry: Extract<LedgerEntry, { kind: 'route' }>): void {
  const entries = readLedger(ledger);
  if (entries.some((e) => e.kind === 'route' && e.netnsIno === entry.netnsIno && e.what === entry.what)) return;
  writeLedger(ledger, [...entries, entry]);
}

/** Forget a rule/route (it was removed). */
export function forgetRoute(
  ledger: string,
  netnsIno: number,
  what: Extract<LedgerEntry, { kind: 'route' }>['what'],
): void {
  const entries = readLedger(ledger);
  const kept = entries.filter((e) => !(e.kind === 'route' && e.netnsIno === netnsIno && e.what === what));
  if (kept.length !== entries.length) writeLedger(ledger, kept);
}

/** Replace the whole ledger (uninstall writes back what it could not undo). */
export function replaceLedger(path: string, entries: readonly LedgerEntry[]): void {
  writeLedger(path, entries);
}
