// The node agent's one write to the API server, end to end: `ambpf run --mode inpod --kubeconfig`
// against the fake API server, a ZDS ztunnel stand-in on the node. A pod ztunnel acked is annotated
// `ambient.istio.io/redirection: enabled` (istiod sends HBONE only to such pods,
// pilot/pkg/serviceregistry/ambient/workloads.go); a pod that leaves the mesh loses the annotation.
import t from 'tap';
import { startTestbed, type Testbed, type TestbedSpec } from '../../src/testbed/index.ts';
import { startZtunnels } from '../../src/testbed/ztunnel/launch.ts';
import { zdsSocketPath } from '../../src/testbed/loader.ts';
import { REDIRECTION_ANNOTATION } from '../../src/agent/annotate.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { startLoader, waitReady, type Loader } from '../helpers/loader.ts';
import { eventually } from '../helpers/wait.ts';
import { startClusterApi, type ClusterApi } from './loader-harness.ts';

const NODE = 'node1';
const spec: TestbedSpec = {
  nodes: [{ name: NODE }],
  namespaces: [{ name: 'mesh', labels: { 'istio.io/dataplane-mode': 'ambient' } }, { name: 'plain' }],
  pods: [
    { name: 'app1', namespace: 'mesh', node: NODE },
    { name: 'app2', namespace: 'mesh', node: NODE },
    { name: 'client', namespace: 'plain', node: NODE },
  ],
};

let tb: Testbed;
let api: ClusterApi;
let loader: Loader | undefined;

async function annotation(namespace: string, name: string): Promise<string | undefined> {
  const pod = await api.server.getPod(namespace, name);
  const annotations = (pod?.metadata as { annotations?: Record<string, string> } | undefined)?.annotations;
  return annotations?.[REDIRECTION_ANNOTATION];
}

t.before(async () => {
  tb = await startTestbed(spec, { topology: 'inpod', prefix: testPrefix(), standIn: false });
  api = await startClusterApi(tb, tb.node(NODE), []);
  loader = startLoader(tb, tb.node(NODE), { kubeconfig: api.kubeconfig }, [], true);
  await waitReady(tb, loader);
});
t.teardown(async () => {
  if (loader) {
    loader.proc.kill('SIGTERM');
    await loader.proc.exited;
  }
  await api?.server.stop();
  await tb?.down();
});

t.test('no annotation while no ztunnel has taken the pods (a restarted agent must not flip them)', async (t) => {
  t.equal(await annotation('mesh', 'app1'), undefined);
  t.equal(await annotation('plain', 'client'), undefined, 'a non-mesh pod is never annotated');
});

t.test('ztunnel acks the pods: `enabled`', async (t) => {
  await startZtunnels(tb, { zdsSocket: (node) => zdsSocketPath(tb, tb.node(node)) });
  for (const pod of ['app1', 'app2']) {
    await eventually(async () => (await annotation('mesh', pod)) === 'enabled', 15_000, `${pod} annotated enabled`);
    t.pass(`${pod}: enabled`);
  }
  t.equal(await annotation('plain', 'client'), undefined, 'still none on the non-mesh pod');
});

t.test('a pod opted out of the mesh loses the annotation', async (t) => {
  // As `kubectl label pod app2 istio.io/dataplane-mode=none` would: the current object, relabelled.
  const pod = await api.server.getPod('mesh', 'app2');
  if (!pod) throw new Error('app2 is not in the API server');
  const meta = pod.metadata as { labels?: Record<string, string> };
  await api.server.updatePod({
    ...pod,
    metadata: { ...meta, labels: { ...(meta.labels ?? {}), 'istio.io/dataplane-mode': 'none' } },
  });
  await eventually(async () => (await annotation('mesh', 'app2')) === undefined, 15_000, "app2's annotation removed");
  t.equal(await annotation('mesh', 'app1'), 'enabled', 'the other pod keeps its own');
});

t.test('a stale `redirection` annotation on a pod outside the mesh is removed', async (t) => {
  // As left by an agent that crashed, or a pod that left the mesh while no agent ran.
  const pod = await api.server.getPod('plain', 'client');
  if (!pod) throw new Error('client is not in the API server');
  const meta = pod.metadata as { annotations?: Record<string, string> };
  await api.server.updatePod({
    ...pod,
    metadata: { ...meta, annotations: { ...(meta.annotations ?? {}), [REDIRECTION_ANNOTATION]: 'enabled' } },
  });
  await eventually(
    async () => (await annotation('plain', 'client')) === undefined,
    15_000,
    'the stale annotation removed',
  );
  t.pass('removed');
  t.equal(await annotation('mesh', 'app1'), 'enabled', 'a mesh pod keeps its own');
});
