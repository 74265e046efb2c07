// bpftool's byte layouts: fprint_hex (plain text) and print_hex_data_json (JSON arrays of "0x..").
import type { JsonWriter } from './json-writer.ts';

function hex2(b: number): string {
  return b.toString(16).padStart(2, '0');
}

/**
 * Bytes as bpftool's fprint_hex prints them: `sep` between bytes, two spaces after every 8th, a newline
 * after every 16th (and no separator at the start of the new line).
 */
export function formatHex(data: Uint8Array, sep = ' '): string {
  let out = '';
  for (let i = 0; i < data.length; i++) {
    if (i === 0) out += '';
    else if (i % 16 === 0) out += '\n';
    else if (i % 8 === 0) out += '  ';
    else out += sep;
    out += hex2(data[i]!);
  }
  return out;
}

/** `["0x01","0x02"]` through the writer, so pretty mode breaks the line before `]` like bpftool. */
export function writeHexJson(jw: JsonWriter, data: Uint8Array): void {
  jw.startArray();
  for (const b of data) jw.raw(`"0x${hex2(b)}"`);
  jw.endArray();
}

/**
 * Parse the BYTES of `key [hex] BYTES` the way bpftool does: each word through strtoul with base 0
 * (0x.. hex, 0.. octal, else decimal) or base 16 after `hex`, truncated to a byte.
 * Returns the parsed bytes and how many words were used, or the word that failed to parse.
 */
export function parseByteWord(word: string, base: 0 | 16): number | undefined {
  const v = strtoul(word, base);
  return v === undefined ? undefined : Number(v & 0xffn);
}

/**
 * C strtoul with the whole string required to be consumed (bpftool checks `*endptr`). Accepts leading
 * whitespace and sign like C; a negative value wraps modulo 2^64. Returns undefined when characters
 * remain after the number. An empty string parses as 0 with nothing left, as in C.
 */
export function strtoul(word: string, base: 0 | 10 | 16): bigint | undefined {
  let s = word.replace(/^[ \t\n\v\f\r]+/, '');
  let neg = false;
  if (s[0] === '+' || s[0] === '-') {
    neg = s[0] === '-';
    s = s.slice(1);
  }
  let b: number = base;
  if ((b === 0 || b === 16) && /^0[xX][0-9a-fA-F]/.test(s)) {
    s = s.slice(2);
    b = 16;
  } else if (b === 0) {
    b = s.startsWith('0') ? 8 : 10;
  }
  const digits = b === 16 ? /^[0-9a-fA-F]+/ : b === 8 ? /^[0-7]+/ : /^[0-9]+/;
  const m = digits.exec(s);
  if (!m) {
    // No digits at all: C leaves endptr at the start, so any non-empty input fails the *endptr check.
    return word.length === 0 ? 0n : undefined;
  }
  if (m[0].length !== s.length) return undefined;
  let v = 0n;
  for (const ch of m[0]) v = v * BigInt(b) + BigInt(parseInt(ch, b));
  const max = (1n << 64n) - 1n;
  if (v > max) v = max; // ERANGE: strtoul saturates
  return neg ? ((1n << 64n) - v) & max : v;
}
