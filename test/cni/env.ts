// The one-node inpod testbed the CNI plugin tests share (plugin.test.ts, race.test.ts): the plugin
// built, node1 with its ztunnel pod, a mesh and a plain namespace, a non-mesh HTTP server pod; the
// agent (`ambpf run --mode inpod --cni-socket`, serving ZDS) and the ZDS ztunnel stand-in; and the
// sandboxes a runtime makes through the real chain (loopback, bridge + host-local, ambpf-cni).
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startTestbed, type Testbed, type TestbedPod, type TestbedSpec } from '../../src/testbed/index.ts';
import { startHttpServer } from '../../src/testbed/helpers.ts';
import { startZtunnels } from '../../src/testbed/ztunnel/launch.ts';
import { zdsSocketPath } from '../../src/testbed/loader.ts';
import { CniChain } from '../../src/cni/chain.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { startLoader, waitReady, type Loader } from '../helpers/loader.ts';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const PLUGIN = join(ROOT, 'build/cni/ambpf-cni');
/** The HTTP server's port on pod `server`. */
export const PORT = 8080;

/** node1 with ztunnel, the mesh (ambient) and plain namespaces, pod `server` (plain), then `pods`. */
export function cniSpec(pods: TestbedSpec['pods']): TestbedSpec {
  return {
    nodes: [{ name: 'node1', ztunnel: true }],
    namespaces: [
      { name: 'mesh', labels: { 'istio.io/dataplane-mode': 'ambient' } },
      { name: 'plain', labels: {} },
    ],
    pods: [{ name: 'server', namespace: 'plain', node: 'node1' }, ...pods],
  };
}

export interface CniNode {
  readonly tb: Testbed;
  /** The pods file the agent reads (written by the test before startCniAgent). */
  readonly podsFile: string;
  /** The agent's CNI socket, where the plugin connects. */
  readonly socket: string;
}

/** Builds the plugin (make cni) and brings the testbed up (inpod, no per-pod stand-ins). */
export async function startCniTestbed(spec: TestbedSpec): Promise<CniNode> {
  execFileSync('make', ['-s', '-C', ROOT, 'cni'], { stdio: 'inherit' });
  const tb = await startTestbed(spec, { topology: 'inpod', prefix: testPrefix(), standIn: false });
  return { tb, podsFile: join(tb.info.runDir, 'pods.json'), socket: join(tb.info.runDir, 'cni.sock') };
}

/**
 * With the pods file written: the agent on node1 (`flags` name the CNI socket and its bounds) until
 * ready, the ZDS ztunnel stand-in connected to it, and the HTTP server on pod `server`.
 */
export async function startCniAgent(node: CniNode, flags: readonly string[]): Promise<Loader> {
  const { tb } = node;
  const loader = startLoader(tb, tb.node('node1'), node.podsFile, flags, true);
  await waitReady(tb, loader);
  await startZtunnels(tb, { zdsSocket: (n) => zdsSocketPath(tb, tb.node(n)) });
  await startHttpServer(tb, 'server', PORT);
  return loader;
}

/** The agent stopped (SIGTERM, as the kubelet stops it), then the testbed taken down. */
export async function stopCniNode(tb: Testbed | undefined, loader: Loader | undefined): Promise<void> {
  if (loader) {
    loader.proc.kill('SIGTERM');
    await loader.proc.exited;
  }
  await tb?.down();
}

/** The chain a runtime runs for a sandbox: loopback, bridge + host-local on ambcni0, ambpf-cni last. */
export function cniChain(node: CniNode, cniBin?: string): CniChain {
  return new CniChain({
    plugin: PLUGIN,
    socketPath: node.socket,
    nodeNetnsPath: node.tb.node('node1').netnsPath,
    bridge: 'ambcni0',
    subnet: '198.19.200.0/24',
    ipamDir: join(node.tb.info.runDir, 'ipam'),
    ...(cniBin === undefined ? {} : { cniBin }),
  });
}

/** A sandbox's Pod object as Kubernetes shows it before the sandbox exists: Pending, no IP. */
export function pendingPod(name: string, uid: string): Record<string, unknown> {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: 'mesh', uid, labels: {}, annotations: {}, resourceVersion: '9000' },
    spec: { nodeName: 'node1', containers: [{ name: 'app', image: 'registry.local/ambtb/pause:1' }] },
    status: { phase: 'Pending' },
  };
}

/**
 * A sandbox's TestbedPod: the node and namespace of pod `template`, its own uid and netns, and a cgroup
 * under node1's kubepods (the caller makes netns and cgroup); no IP until the chain's ADD.
 */
export function sandboxPod(tb: Testbed, template: string, name: string, uid: string, netnsPath: string): TestbedPod {
  return {
    ...tb.pod(template),
    name,
    uid,
    netnsPath,
    containerCgroupPath: join(tb.node('node1').kubepodsCgroup, 'besteffort', `pod${uid}`, 'c1'),
    ip: '',
    ips: [],
  };
}
