// Flag bits of ambpf_pods / ambpf_netns entries as words (ambpf.h's POD_* bits).
import {
  POD_AMBIENT,
  POD_DNS_CAPTURE,
  POD_IS_ZTUNNEL,
  POD_LOCAL_ROUTE,
  POD_NO_DNS_CAPTURE,
  POD_OPT_OUT,
} from '../bpf/schema.ts';

const WORDS: ReadonlyArray<readonly [number, string]> = [
  [POD_AMBIENT, 'ambient'],
  [POD_OPT_OUT, 'opt-out'],
  [POD_DNS_CAPTURE, 'dns-capture'],
  [POD_IS_ZTUNNEL, 'ztunnel'],
  [POD_NO_DNS_CAPTURE, 'no-dns-capture'],
  [POD_LOCAL_ROUTE, 'keep-dst'],
];

/** Known bits by name, unknown ones as one hex word (a newer loader's flag stays visible). */
export function podFlagWords(flags: number): string[] {
  const words = WORDS.filter(([bit]) => (flags & bit) !== 0).map(([, w]) => w);
  const known = WORDS.reduce((m, [bit]) => m | bit, 0);
  const rest = flags & ~known;
  if (rest) words.push(`0x${(rest >>> 0).toString(16)}`);
  return words;
}
