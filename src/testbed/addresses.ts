// The testbed's address plan, all inside 198.18.0.0/15 (RFC 2544 benchmarking space) so nothing can
// be mistaken for a real network: node i (1-based) has wire IP 198.18.0.i/24 and pod CIDR
// 198.19.i.0/24; its pods get 198.19.i.2, .3, ... in spec order (ztunnel first).
// IPv6 (ULA fd00:a3bf::/32): node i has wire IP fd00:a3bf::i/64 and pod CIDR fd00:a3bf:1:i::/64 (i
// in hex); pod k gets fd00:a3bf:1:i::<k + 2>, so a dual-stack pod's two addresses end alike.
import { createHash } from 'node:crypto';

export const WIRE_PREFIX_LEN = 24;
/** Calico's trick: every pod's default gateway is this link-local address, answered by the host veth. */
export const POD_GATEWAY = '169.254.1.1';
/** Calico's IPv6 gateway: the link-local address of a host veth whose MAC is ee:ee:ee:ee:ee:ee. */
export const POD_GATEWAY6 = 'fe80::ecee:eeff:feee:eeee';
export const WIRE_PREFIX_LEN6 = 64;
/** Kubelet health probes are SNAT'd to this source; Istio never captures it. */
export const PROBE_SOURCE = '169.254.7.127';

export function nodeWireIp(nodeIndex: number): string {
  return `198.18.0.${nodeIndex}`;
}

export function nodePodCidr(nodeIndex: number): string {
  return `198.19.${nodeIndex}.0/24`;
}

export function podIp(nodeIndex: number, podIndexOnNode: number): string {
  return `198.19.${nodeIndex}.${podIndexOnNode + 2}`;
}

export function nodeWireIp6(nodeIndex: number): string {
  return `fd00:a3bf::${nodeIndex.toString(16)}`;
}

export function nodePodCidr6(nodeIndex: number): string {
  return `fd00:a3bf:1:${nodeIndex.toString(16)}::/64`;
}

export function podIp6(nodeIndex: number, podIndexOnNode: number): string {
  return `fd00:a3bf:1:${nodeIndex.toString(16)}::${(podIndexOnNode + 2).toString(16)}`;
}

/** Calico-style host-side veth name: "cali" + 11 hex chars of sha1("<ns>.<pod>") (15 bytes max). */
export function hostVethName(namespace: string, pod: string): string {
  return 'cali' + createHash('sha1').update(`${namespace}.${pod}`).digest('hex').slice(0, 11);
}
