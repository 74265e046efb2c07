// The pod-netns half of the return path of ztunnel's spoofed inbound legs (inpod; see
// AMBPF_MARK_ORIG_SRC in bpf/include/ambpf.h): the app's accepted socket takes the SYN's mark
// (tcp_fwmark_accept), and a rule + local route hand its replies to the client's address back to
// ztunnel over lo. Every change is recorded in the ledger (sysctl.ts), so that releasing the pod and
// `ambpf uninstall` put back what was there. Separate from datapath-inpod.ts so that uninstall can
// undo it without loading the datapath.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { AmbpfError } from '../errors.ts';
import { withNetns } from '../libbpf/index.ts';
import {
  changeNetSysctl,
  currentNetnsIno,
  forgetRoute,
  netSysctlPath,
  recordRoute,
  restoreNetSysctl,
} from './sysctl.ts';
import { MARK_ORIG_SRC } from './schema.ts';

export const ORIG_SRC_ROUTE_TABLE = 41919;
export const ORIG_SRC_RULE_PREF = 32763;
const ORIG_SRC_MARK = `0x${MARK_ORIG_SRC.toString(16)}/0x${MARK_ORIG_SRC.toString(16)}`;
/** Sysctls the return path sets to 1 in the pod's netns (tcp_migrate_req only where it exists, 5.14+). */
export const RETURN_PATH_SYSCTLS = ['ipv4/tcp_fwmark_accept', 'ipv4/tcp_migrate_req'] as const;

export class ReturnPathError extends AmbpfError {
  override readonly name: string = 'ReturnPathError';
}

/** `ip` in the calling thread's netns (a child inherits the main thread's netns from withNetns). */
function ip(args: readonly string[], input?: string): string {
  return execFileSync('ip', args, {
    encoding: 'utf8',
    input,
    stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  });
}

/**
 * `ip -force -batch` reports each failed line as its error message followed by `Command failed -:N`:
 * true when every failed line's message is one its line accepts.
 */
function onlyAcceptedFailures(stderr: string, accepted: ReadonlyArray<RegExp | undefined>): boolean {
  const failures = [...stderr.matchAll(/([^]*?)Command failed -:(\d+)\n?/g)];
  if (failures.length === 0) return false; // failed some other way
  return failures.every(([, message, line]) => accepted[Number(line) - 1]?.test(message ?? '') === true);
}

/**
 * Idempotent: the rule is deleted (if there) and added, the route replaced. One `ip -batch` per family,
 * since each costs a process spawn (~10 ms) on the pod-add and pod-delete paths (issue 20's pod change
 * latency); -force runs every line, and only the failures a line may have are accepted (the delete of a
 * rule that is not there, the add of one that is).
 * Off: the sysctls get back the value found when they were first set (not 0: a pod may have had them
 * on by itself), the rule and the table go.
 */
export function setOrigSrcReturnPath(netnsPath: string, on: boolean, ledger: string): void {
  withNetns(netnsPath, () => {
    // tcp_fwmark_accept: one switch for TCP over IPv4 and IPv6; /proc/sys/net is the opening thread's
    // netns. tcp_migrate_req: a ztunnel rolling upgrade closes the old ztunnel's listeners in every
    // pod; connections still in their accept queues move to the new ztunnel's listener of the
    // reuseport group instead of being reset.
    for (const rel of RETURN_PATH_SYSCTLS) {
      if (!existsSync(netSysctlPath(rel))) continue;
      if (on) changeNetSysctl(ledger, netnsPath, rel, '1');
      else restoreNetSysctl(ledger, rel);
    }
    const families = existsSync('/proc/sys/net/ipv6/conf/lo') ? (['-4', '-6'] as const) : (['-4'] as const);
    for (const family of families) {
      const rule = `fwmark ${ORIG_SRC_MARK} pref ${ORIG_SRC_RULE_PREF} lookup ${ORIG_SRC_ROUTE_TABLE}`;
      const any = family === '-4' ? '0.0.0.0/0' : '::/0';
      // [line, what its failure may say and still be fine]
      const lines: Array<[string, RegExp | undefined]> = on
        ? [
            [`rule del ${rule}`, /No such file or directory/],
            [`rule add ${rule}`, /File exists/],
            [`route replace local ${any} dev lo table ${ORIG_SRC_ROUTE_TABLE}`, undefined],
          ]
        : [
            [`rule del ${rule}`, /No such file or directory/],
            [`route flush table ${ORIG_SRC_ROUTE_TABLE}`, undefined],
          ];
      try {
        ip([family, '-force', '-batch', '-'], lines.map(([l]) => l).join('\n') + '\n');
      } catch (err) {
        const stderr = String((err as { stderr?: string }).stderr ?? err).trim();
        if (
          !onlyAcceptedFailures(
            stderr,
            lines.map(([, ok]) => ok),
          )
        ) {
          throw new ReturnPathError(
            `${on ? 'adding' : 'removing'} the return route of spoofed ztunnel legs (ip ${family}) in ${netnsPath}: ${stderr}`,
          );
        }
      }
    }
    if (on) recordRoute(ledger, { kind: 'route', netnsIno: currentNetnsIno(), netnsPath, what: 'inpod-return' });
    else forgetRoute(ledger, currentNetnsIno(), 'inpod-return');
  });
}
