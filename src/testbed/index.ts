/**
 * The local testbed: a Kubernetes-like cluster made of network namespaces, used by tests, `ambpf demo`
 * and `ambpf bench` (docs/architecture.md "Testbed and benchmark").
 *
 * Contract (others rely on it):
 * - `startTestbed(spec, { prefix?, topology: 'node' | 'inpod', standIn?, detached? })` -> `Testbed`.
 *   `spec` declares nodes (`ztunnel` default true), namespaces (name + labels) and pods (name,
 *   namespace, node, labels, annotations, hostNetwork?). `defaultSpec()` is the two-node demo: per node
 *   `ztunnel-<node>` (istio-system, app=ztunnel), `app1-<node>`/`app2-<node>` in namespace `mesh`
 *   (labelled istio.io/dataplane-mode=ambient) and `client-<node>` in namespace `plain`.
 * - Prefix: every testbed name starts with the family `ambtb` (a given prefix gets it prepended, e.g.
 *   testPrefix() "ab12cd" -> "ambtbab12cd"). `ambpf testbed down --all` removes every `ambtb*` leftover.
 * - Addresses (all 198.18.0.0/15): node i (1-based) is 198.18.0.i/24 on its eth0; nodes share a bridge
 *   in netns `<prefix>-wire`; node i's pod CIDR is 198.19.i.0/24, pods get 198.19.i.2… (ztunnel first),
 *   a /32 route per pod on the node via its host veth `cali<11 hex>` (MAC ee:ee:ee:ee:ee:ee); inside the
 *   pod `eth0` has the /32 and `default via 169.254.1.1` (a permanent neighbour), Calico-style.
 *   Nodes have ip_forward=1 and rp_filter=0.
 * - Netns: `/run/netns/<prefix>-<node>`, pods `/run/netns/<prefix>-pod-<ns>-<name>` (hostNetwork pods
 *   use their node's). Nothing is created in the root netns.
 * - cgroups: `<cgroup2>/<prefix>/<node>/kubepods/besteffort/pod<uid>/<containerId>` holds each pod's
 *   pause process (`sleep infinity`, in the pod netns too) and everything exec'd in the pod;
 *   `<cgroup2>/<prefix>/<node>/system` holds what is exec'd on the node (outside kubepods).
 * - `tb.exec(target, argv, opts)` runs in the target's netns AND cgroup via
 *   `sh -c 'echo $$ > cgroup.procs; exec nsenter --net=…'` (never `ip netns exec`: it hides bpffs and
 *   cgroupfs); `target` is a pod ("ns/name" or a unique name), a node name, or a pod/node object.
 *   `tb.spawn(...)` starts a long-running one; `down()` kills it.
 * - `tb.writePodsList(path)`: a `v1 List` of Namespaces and Pods with the real shape.
 * - `tb.ztunnelLog(node)`: the stand-in's JSON log lines (ZtunnelLogEntry), one per connection.
 * - `tb.down()`: idempotent; kills every process in `<cgroup2>/<prefix>` (cgroup.kill), deletes the
 *   netns (veths, routes, ipsets and iptables rules inside go with them), the cgroups,
 *   `/sys/fs/bpf/<prefix>-*` and the run dir `<tmpdir>/<prefix>`.
 * - Node bpffs dir suggestion: `/sys/fs/bpf/<prefix>-<node>` (node.bpffsDir).
 * - `down --all` skips testbeds whose owner (the process that called startTestbed, recorded in
 *   `<runDir>/owner` unless `detached`) is alive, so it never pulls a cluster from under a running test.
 *
 * The ztunnel stand-in (ztunnel/standin.ts), started by default (`standIn: false` leaves the ztunnel
 * ports free for the benchmark's sinks): node topology = one process in the ztunnel pod (its netns and
 * cgroup); inpod = one process per mesh pod, in that pod's netns and the ztunnel pod's cgroup.
 * - Listeners `[::]:15001/15006/15008`, dual-stack (v4-mapped peers), made with libc socket() through
 *   koffi so IP_TRANSPARENT (node topology) is set before bind, then handed to Node (`listen({fd})`).
 * - Original dst: getsockopt(SOL_IP, SO_ORIGINAL_DST) (SOL_IPV6 for v6 peers), else the accepted
 *   socket's local address (TPROXY, sk_lookup, sk_assign). Nothing else.
 * - Upstream sockets: libc socket() + setsockopt(SO_MARK, 0x539) BEFORE connect, then
 *   `new net.Socket({ fd }).connect()`, so even the first SYN is marked (a test counts marked SYNs).
 * - 15001 -> to a mesh pod: HBONE = HTTP/2 CONNECT over mTLS (test CA made with openssl at start,
 *   `info.pkiDir`, ALPN h2, SPIFFE id of ztunnel) to `<dst>:15008`, `:authority` = original dst; in node
 *   topology a same-node destination is tunnelled to our own 127.0.0.1:15008 (the node does not steer
 *   ztunnel's own traffic back to it). To a non-mesh destination: plain TCP passthrough.
 * - 15008 -> terminate HBONE, connect to the authority; 15006 -> connect to the original dst. The
 *   upstream leaves from ztunnel's own address (no source-IP spoofing): the server sees ztunnel's pod
 *   IP (node) or its own IP (inpod) as peer.
 * - One JSON line per connection (ZtunnelLogEntry) in `ztunnel.logPath`, read with `tb.ztunnelLog(node)`.
 *
 * Istio's iptables path for either topology: src/baseline (`installIptablesPath(tb)`,
 * `removeIptablesPath(tb)`). Helpers for tests: src/testbed/helpers.ts (`curl`, `startHttpServer`,
 * `waitForPort`).
 */
export { startTestbed, attachTestbed, effectivePrefix, Testbed, type StartOptions, type Target } from './testbed.ts';
export { startStandIns, stopStandIns } from './ztunnel/launch.ts';
export {
  startZtunnels,
  startExtraZtunnel,
  stopZtunnel,
  ztunnelsOn,
  ztunnelReadiness,
  testbedDnsRecords,
  type ZtunnelsOptions,
  type ZtunnelHandle,
} from './ztunnel/launch.ts';
export {
  PORT_OUTBOUND,
  PORT_INBOUND_PLAINTEXT,
  PORT_HBONE,
  PORT_READINESS,
  ZTUNNEL_MARK,
  type InpodStandInState,
} from './ztunnel/config.ts';
export {
  defaultSpec,
  isMeshPod,
  type TestbedSpec,
  type NodeSpec,
  type PodSpec,
  type NamespaceSpec,
  type Topology,
} from './spec.ts';
export { removeByPrefix, findPrefixes, liveOwner, PREFIX_FAMILY } from './cleanup.ts';
export type { TestbedInfo, TestbedNode, TestbedPod, TestbedZtunnel, ZtunnelLogEntry } from './types.ts';
export type { TestbedProcess, SpawnOptions } from './exec.ts';
