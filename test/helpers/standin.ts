// Which way a request went, from the ztunnel stand-in's connection log. The stand-in writes a
// connection's line when the connection ends, which on a busy machine can be well after the client
// got its answer: wait for the lines a request must produce, never for a fixed time.
import type { Target, Testbed, ZtunnelLogEntry } from '../../src/testbed/index.ts';
import { curl } from '../../src/testbed/helpers.ts';
import { observeFor, waitUntil } from './wait.ts';

type Direction = ZtunnelLogEntry['direction'];

/** Per node, the directions whose lines a request must produce (each at least once). */
export type Expect = Readonly<Record<string, readonly Direction[]>>;

/** How long a line may take to appear: a bound on a hang, not a speed claim. */
const LINES_MS = 10_000;
/** The window in which a request that should bypass ztunnel must leave no line (see observeFor). */
const QUIET_MS = 300;

/** The number of lines each node's stand-in logged so far: the start of a request's lines. */
export function logMark(tb: Testbed, nodes: readonly string[]): ReadonlyMap<string, number> {
  return new Map(nodes.map((n) => [n, tb.ztunnelLog(n).length]));
}

/**
 * The lines logged on each marked node since `mark`. With `expect`, once every expected direction
 * shows up (or, after `timeoutMs`, what there is, for the assertion to show); with none, after
 * QUIET_MS: a request expected to leave no line at all. A probe polled until a change takes effect
 * passes a shorter `timeoutMs`: "not yet" then costs that much per try.
 */
export async function linesSince(
  tb: Testbed,
  mark: ReadonlyMap<string, number>,
  expect?: Expect,
  timeoutMs = LINES_MS,
): Promise<Record<string, ZtunnelLogEntry[]>> {
  const read = (): Record<string, ZtunnelLogEntry[]> =>
    Object.fromEntries([...mark].map(([node, since]) => [node, tb.ztunnelLog(node).slice(since)]));
  if (expect === undefined) {
    await observeFor(QUIET_MS);
    return read();
  }
  await waitUntil(() => {
    const lines = read();
    return Object.entries(expect).every(([node, dirs]) =>
      dirs.every((d) => lines[node]?.some((e) => e.direction === d)),
    );
  }, timeoutMs);
  return read();
}

export interface Traced {
  readonly body: string;
  /** The stand-in's lines of the request, per node. */
  readonly lines: Record<string, ZtunnelLogEntry[]>;
}

/** curl from a pod to ip:port (throws when it fails) and the lines it left on `nodes` (see linesSince). */
export async function tracedCurl(
  tb: Testbed,
  from: Target,
  ip: string,
  port: number,
  nodes: readonly string[],
  expect?: Expect,
  timeoutMs?: number,
): Promise<Traced> {
  const mark = logMark(tb, nodes);
  const r = await curl(tb, from, ip, port, { timeoutMs: 5000 });
  if (r.exitCode !== 0)
    throw new Error(
      `curl ${typeof from === 'string' ? from : from.name} -> ${ip}:${port} failed (${r.exitCode}): ${r.stderr}`,
    );
  return { body: r.body, lines: await linesSince(tb, mark, expect, timeoutMs) };
}
