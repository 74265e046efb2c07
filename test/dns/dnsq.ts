// What test/dns/fixtures/dnsq.py prints (its docstring describes each mode), typed once for the tests
// that run it in a pod: test/dns/upstream-e2e.test.ts and test/bpf/inpod-dns.test.ts.
import { resolve } from 'node:path';

export const DNSQ = resolve(import.meta.dirname, 'fixtures/dnsq.py');

export interface DnsqAddr {
  ip: string;
  port: number;
}

/** One answer: "ips" the A/AAAA records, "by" the TXT record (who answered), "from" its source. */
export interface DnsqAnswer {
  id: number;
  rcode?: number;
  aa?: boolean;
  ips?: string[];
  by?: string;
  from?: DnsqAddr;
  asked?: string;
}

/** `query` and `spread`: the answers, and the socket's peer (connected) and own address, or an error. */
export interface DnsqQuery {
  answers: DnsqAnswer[];
  peer?: DnsqAddr;
  sockname?: DnsqAddr;
  error?: string;
}

/** `reuse`: counts over many sockets on reused ports; "ips" and "by" tally the answers' contents. */
export interface DnsqReuse {
  queries: number;
  answers: number;
  wrong_server: number;
  wrong_socket: number;
  lost: number;
  errors: number;
  sockets: number;
  ips: Record<string, number>;
  by: Record<string, number>;
  examples: unknown[];
  seconds: number;
}
