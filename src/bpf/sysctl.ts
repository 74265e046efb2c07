// Network sysctls of the netns the calling thread is in. /proc/sys/net follows the netns of the
// thread that opens it, so callers wrap these in withNetns. In an unprivileged container /proc/sys
// is read-only; the DaemonSet bind-mounts the node's /proc/sys/net elsewhere (writable, and still
// following the thread's netns) and names it in AMBPF_PROC_SYS_NET.
import { readFileSync, writeFileSync } from 'node:fs';

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
