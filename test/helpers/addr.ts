// Addresses of testbed pods as the dual-stack end-to-end tests need them.
import type { Testbed } from '../../src/testbed/index.ts';

/** A pod's IPv4 address (throws when it has none). */
export function podIp4(tb: Testbed, pod: string): string {
  const ip = tb.pod(pod).ips.find((a) => !a.includes(':'));
  if (ip === undefined) throw new Error(`pod ${pod} has no IPv4 address`);
  return ip;
}

/** A pod's IPv6 address (throws when it has none). */
export function podIp6(tb: Testbed, pod: string): string {
  const ip = tb.pod(pod).ips.find((a) => a.includes(':'));
  if (ip === undefined) throw new Error(`pod ${pod} has no IPv6 address`);
  return ip;
}

/** "ip:port", with the IPv6 address in brackets, as the stand-in logs it. */
export const hostPort = (ip: string, port: number): string => (ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`);

/** A regular expression matching `s` literally. */
export const literal = (s: string): RegExp => new RegExp(s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
