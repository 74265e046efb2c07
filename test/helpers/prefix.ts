// A short per-run prefix for every kernel object a test makes (netns, veth, cgroup, pin names).
// Interface names are limited to 15 bytes, so it stays short: "ab" + 4 base36 chars.
import { randomBytes } from 'node:crypto';

const ALPHABET = '0123456789abcdefghijklmnopqrstuvwxyz';

export function testPrefix(): string {
  const bytes = randomBytes(4);
  let s = 'ab';
  for (const b of bytes) s += ALPHABET[b % ALPHABET.length];
  return s;
}
