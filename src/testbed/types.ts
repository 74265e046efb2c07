// The shape of a running testbed as other parts (loader tests, demo, bench) see it. Plain data so
// `ambpf testbed up` can print it as JSON and another process can read it back.
import type { Labels, Topology } from './spec.ts';

export interface TestbedNode {
  readonly name: string;
  /** 1-based; the address plan derives from it. */
  readonly index: number;
  readonly netns: string;
  /** /run/netns/<prefix>-<node>: what nsenter --net= and setns take. */
  readonly netnsPath: string;
  /** The node's address on the wire, 198.18.0.<index>/24 on its eth0. */
  readonly wireIp: string;
  /** Its IPv6 address on the wire, fd00:a3bf::<index>/64. */
  readonly wireIp6: string;
  readonly wireIfname: string;
  readonly podCidr: string;
  readonly podCidr6: string;
  /** <cgroup2>/<prefix>/<node>: everything the node runs. */
  readonly cgroupPath: string;
  /** <cgroup2>/<prefix>/<node>/kubepods: where a loader attaches its cgroup programs. */
  readonly kubepodsCgroup: string;
  /** <cgroup2>/<prefix>/<node>/system: node daemons started with exec(node, ...) land here, outside kubepods. */
  readonly systemCgroup: string;
  /** Suggested bpffs dir for this node's loader; down() removes it. */
  readonly bpffsDir: string;
}

export interface TestbedPod {
  readonly name: string;
  readonly namespace: string;
  readonly uid: string;
  readonly node: string;
  readonly labels: Labels;
  readonly annotations: Labels;
  readonly containers: readonly string[];
  readonly hostNetwork: boolean;
  /** Whether Istio ambient would capture it (namespace/pod label, no opt-out, not hostNetwork, not ztunnel). */
  readonly mesh: boolean;
  readonly isZtunnel: boolean;
  /** Pod IP (the node's wire IP for hostNetwork pods): its first address, the IPv6 one of an IPv6-only pod. */
  readonly ip: string;
  /** Every pod IP, IPv4 first (Kubernetes' status.podIPs). */
  readonly ips: readonly string[];
  readonly netnsPath: string;
  /** <kubepods>/besteffort/pod<uid>. */
  readonly cgroupPath: string;
  /** <kubepods>/besteffort/pod<uid>/<containerId>: holds the pause process and exec'd processes. */
  readonly containerCgroupPath: string;
  readonly containerId: string;
  /** Node-side veth (Calico style "cali…"); empty for hostNetwork pods. */
  readonly hostIfname: string;
  readonly hostIfindex: number;
  /** Pod-side interface name ("eth0"); empty for hostNetwork pods. */
  readonly podIfname: string;
  /** MAC of the pod-side eth0 (what tc steering writes as destination MAC); empty for hostNetwork pods. */
  readonly podMac: string;
  /** The pause-like process (sleep infinity) that keeps the pod's netns and cgroup populated. */
  readonly pausePid: number;
}

export interface TestbedZtunnel {
  readonly node: string;
  /** The ztunnel pod (namespace istio-system, label app=ztunnel). */
  readonly pod: string;
  readonly ip: string;
  readonly netnsPath: string;
  /** JSON lines, one per connection, written by every stand-in process of this node. */
  readonly logPath: string;
}

export interface TestbedInfo {
  readonly prefix: string;
  readonly topology: Topology;
  readonly runDir: string;
  readonly cgroupRoot: string;
  /** <cgroup2>/<prefix>. */
  readonly cgroupPath: string;
  readonly wireNetnsPath: string;
  /** Test CA (ca.crt, ca.key) and the stand-in's cert (ztunnel.crt, ztunnel.key). */
  readonly pkiDir: string;
  readonly nodes: readonly TestbedNode[];
  readonly namespaces: readonly { readonly name: string; readonly uid: string; readonly labels: Labels }[];
  readonly pods: readonly TestbedPod[];
  readonly ztunnels: readonly TestbedZtunnel[];
}

/** One line of the ztunnel stand-in's log. */
export interface ZtunnelLogEntry {
  readonly time: string;
  readonly node: string;
  readonly direction: 'outbound' | 'inbound-hbone' | 'inbound-plaintext';
  /** Where the stand-in process listened: "ztunnel-pod" (node topology) or the pod it runs in (inpod). */
  readonly where: string;
  /** Peer of the accepted connection, "ip:port". */
  readonly source: string;
  /** Original destination "ip:port" (SO_ORIGINAL_DST, else the accepted socket's local address; for HBONE the :authority). */
  readonly originalDst: string;
  /** How the original dst was learned: "SO_ORIGINAL_DST" | "IP6T_SO_ORIGINAL_DST" (an IPv6 original) |
   * "local-address" | "authority". */
  readonly dstFrom: string;
  /** What the stand-in connected to, "ip:port" (for outbound the peer's 15008). */
  readonly upstream: string;
  /** The upstream socket's own address "ip:port": the client's IP when the inbound leg spoofs it. */
  readonly upstreamLocal?: string;
  /** "hbone" (outbound to a mesh pod), "tcp" (passthrough and inbound), "" when nothing was opened. */
  readonly upstreamProtocol: 'hbone' | 'tcp' | '';
  readonly bytesIn: number;
  readonly bytesOut: number;
  /** "ok" or the error that ended the connection. */
  readonly result: string;
}
