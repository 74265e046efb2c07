// The testbed's address plan, all inside 198.18.0.0/15 (RFC 2544 benchmarking space) so nothing can
// be mistaken for a real network: node i (1-based) has wire IP 198.18.0.i/24 and pod CIDR
// 198.19.i.0/24; its pods get 198.19.i.2, .3, ... in spec order (ztunnel first).
import { createHash } from 'node:crypto';

export const WIRE_PREFIX_LEN = 24;
/** Calico's trick: every pod's default gateway is this link-local address, answered by the host veth. */
export const POD_GATEWAY = '169.254.1.1';
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

/** Calico-style host-side veth name: "cali" + 11 hex chars of sha1("<ns>.<pod>") (15 bytes max). */
export function hostVethName(namespace: string, pod: string): string {
  return 'cali' + createHash('sha1').update(`${namespace}.${pod}`).digest('hex').slice(0, 11);
}
