/**
 * The local testbed: a Kubernetes-like cluster made of network namespaces, used by tests, `ambpf demo`
 * and `ambpf bench` (design.md §6).
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
 */
export { startTestbed, attachTestbed, effectivePrefix, Testbed, type StartOptions, type Target } from './testbed.ts';
export { startStandIns, stopStandIns } from './ztunnel/launch.ts';
export { PORT_OUTBOUND, PORT_INBOUND_PLAINTEXT, PORT_HBONE, ZTUNNEL_MARK } from './ztunnel/config.ts';
export { defaultSpec, isMeshPod, type TestbedSpec, type NodeSpec, type PodSpec, type NamespaceSpec, type Topology } from './spec.ts';
export { removeByPrefix, findPrefixes, liveOwner, PREFIX_FAMILY } from './cleanup.ts';
export type { TestbedInfo, TestbedNode, TestbedPod, TestbedZtunnel, ZtunnelLogEntry } from './types.ts';
export type { TestbedProcess, SpawnOptions } from './exec.ts';
