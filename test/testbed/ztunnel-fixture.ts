// Shared by the ztunnel-*.test.ts files: the one-node inpod testbed they run on (mesh pods app and
// web, a plain client pod, no legacy stand-ins) and a bounded wait for a condition.
import { startTestbed, type Testbed, type TestbedSpec } from '../../src/testbed/index.ts';
import { testPrefix } from '../helpers/prefix.ts';

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
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (ok(v)) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
