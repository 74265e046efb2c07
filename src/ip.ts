// IP addresses, text <-> bytes: the one place ambpf parses and prints them. The maps hold every
// address as 16 bytes in network order, IPv4 as v4-mapped IPv6 (bpf/include/ambpf.h); the text form
// is canonical (RFC 5952 for IPv6, a v4-mapped address printed as the IPv4 address it stands for),
// so the same address always compares equal as a string: in the desired state, in discovery, in the
// maps and in the status views.
import { isIP, isIPv4 } from 'node:net';
import { AmbpfError } from './errors.ts';

export class AddressError extends AmbpfError {
  override readonly name: string = 'AddressError';
}

const V4_PREFIX = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

function parseIPv6(ip: string): Uint8Array {
  const out = new Uint8Array(16);
  let text = ip;
  let tail: number[] = [];
  // An embedded dotted quad (::ffff:1.2.3.4) supplies the last 4 bytes.
  const lastColon = text.lastIndexOf(':');
  const last = text.slice(lastColon + 1);
  if (isIPv4(last)) {
    tail = last.split('.').map(Number);
    text = text.slice(0, lastColon + 1) + '0:0';
  }
  const [head = '', rest] = text.split('::') as [string, string | undefined];
  const h = head === '' ? [] : head.split(':');
  const r = rest === undefined || rest === '' ? [] : rest.split(':');
  const groups = rest === undefined ? h : [...h, ...Array<string>(8 - h.length - r.length).fill('0'), ...r];
  groups.forEach((g, i) => {
    const n = parseInt(g, 16);
    out[i * 2] = n >> 8;
    out[i * 2 + 1] = n & 0xff;
  });
  if (tail.length === 4) out.set(tail, 12);
  return out;
}

/** "10.0.0.1" -> ::ffff:10.0.0.1 bytes; an IPv6 string -> its 16 bytes. A zone (%eth0) is refused. */
export function ipToBytes(ip: string): Uint8Array {
  const family = ip.includes('%') ? 0 : isIP(ip);
  if (family === 4) return Uint8Array.from([...V4_PREFIX, ...ip.split('.').map(Number)]);
  if (family === 6) return parseIPv6(ip);
  throw new AddressError(`"${ip}" is not an IPv4 or IPv6 address.`, { ip });
}

/** A 4-byte IPv4 address in network order. */
export function ip4ToBytes(ip: string): Uint8Array {
  if (!isIPv4(ip)) throw new AddressError(`"${ip}" is not an IPv4 address.`, { ip });
  return Uint8Array.from(ip.split('.').map(Number));
}

export function isV4Mapped(b: Uint8Array): boolean {
  return V4_PREFIX.every((x, i) => b[i] === x);
}

export function isZeroIp(b: Uint8Array): boolean {
  return b.every((x) => x === 0);
}

/** 4 bytes -> "a.b.c.d"; 16 bytes -> "a.b.c.d" for v4-mapped, else the compressed IPv6 form. */
export function bytesToIp(b: Uint8Array): string {
  if (b.length === 4) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
  if (b.length !== 16) throw new AddressError(`an address is 4 or 16 bytes, got ${b.length}.`);
  if (isV4Mapped(b)) return `${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((b[i] ?? 0) << 8) | (b[i + 1] ?? 0));
  // The first longest run of zero groups (length >= 2) becomes "::" (RFC 5952).
  let best = -1;
  let bestLen = 0;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

/**
 * The canonical text of an IP literal, or undefined if it is not one: "2001:DB8:0:0::1" ->
 * "2001:db8::1", "::ffff:198.18.0.1" -> "198.18.0.1" (a v4-mapped pod IP is an IPv4 pod IP).
 */
export function canonicalIp(text: string): string | undefined {
  if (text.includes('%') || isIP(text) === 0) return undefined;
  return bytesToIp(ipToBytes(text));
}

/** Order for listings: IPv4 numerically first, then IPv6 by its text. */
export function compareIps(a: string, b: string): number {
  const v4 = (ip: string): number => (isIPv4(ip) ? new DataView(ip4ToBytes(ip).buffer).getUint32(0) : Infinity);
  return v4(a) - v4(b) || a.localeCompare(b);
}
