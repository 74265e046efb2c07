// Shared by the ztunnel-*.test.ts files: the one-node inpod testbed they run on (mesh pods app and
// web, a plain client pod, no legacy stand-ins), a bounded wait for a condition, and in-pod iptables
// rules in istio-cni's shape for tests that run without an agent.
import { startTestbed, type Target, type Testbed, type TestbedSpec } from '../../src/testbed/index.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { waitUntil } from '../helpers/wait.ts';

const spec: TestbedSpec = {
  nodes: [{ name: 'node1' }],
  namespaces: [{ name: 'mesh', labels: { 'istio.io/dataplane-mode': 'ambient' } }, { name: 'plain' }],
  pods: [
    { name: 'app', namespace: 'mesh', node: 'node1' },
    { name: 'web', namespace: 'mesh', node: 'node1' },
    { name: 'client', namespace: 'plain', node: 'node1' },
  ],
};

export function oneNodeInpodTestbed(): Promise<Testbed> {
  return startTestbed(spec, { topology: 'inpod', prefix: testPrefix(), standIn: false });
}

/** Polls probe until ok(value), at most timeoutMs; the error names what and the last value seen. */
export async function until<T>(
  what: string,
  probe: () => Promise<T> | T,
  ok: (v: T) => boolean,
  timeoutMs = 10_000,
): Promise<T> {
  let last: T | undefined;
  const held = await waitUntil(async () => ok((last = await probe())), timeoutMs);
  if (!held) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(last)}`);
  return last as T;
}

/** Appends iptables rules (each written as one line of arguments) inside a pod; they go with its netns. */
export async function iptables(tb: Testbed, pod: Target, ...rules: string[]): Promise<void> {
  for (const rule of rules) await tb.exec(pod, ['iptables', ...rule.split(' ')]);
}

/** istio-cni's in-pod inbound capture of one port (its own traffic, marked 0x539, excluded). */
export const REDIRECT_INBOUND = (port: number): string =>
  `-t nat -A PREROUTING -p tcp --dport ${port} -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006`;
