// What a stand-in process is told at start (one JSON argument), and ztunnel's fixed numbers.
import type { ManagerState } from './workloads.ts';

export const PORT_OUTBOUND = 15001;
export const PORT_INBOUND_PLAINTEXT = 15006;
export const PORT_HBONE = 15008;
/** ztunnel's readiness server (`/healthz/ready`), in its own pod's netns. */
export const PORT_READINESS = 15021;
/** ztunnel marks every socket it opens with 1337 so no redirect (iptables or eBPF) captures it again. */
export const ZTUNNEL_MARK = 0x539;

export interface StandInConfig {
  /** Node name for the log. */
  readonly node: string;
  /** Who this process serves: "ztunnel-<node>" (node topology) or "<ns>/<pod>" (inpod). */
  readonly where: string;
  /** JSON lines, appended (O_APPEND: several processes of one node share the file). */
  readonly logPath: string;
  readonly pkiDir: string;
  /** IP_TRANSPARENT on the listeners: TPROXY or sk_assign hand them foreign destinations (node topology). */
  readonly transparent: boolean;
  /** Pod IPs in the mesh: outbound to them goes HBONE to <ip>:15008, the rest passthrough (workload lookup). */
  readonly meshIps: readonly string[];
  /**
   * Node topology only: mesh pods on this ztunnel's own node. ztunnel's upstream leaves from its own IP
   * and the node never steers that back to it, so HBONE to a same-node pod goes to our own 15008
   * (127.0.0.1) and the inbound half runs in this process, as real node-mode ztunnel did in-process.
   */
  readonly localMeshIps: readonly string[];
  /** Written once all three listeners are up. */
  readonly readyFile: string;
  /**
   * Inbound legs connect to the app from the client's IP (ztunnel's default, ENABLE_ORIG_SRC unset);
   * default false here, the behaviour these single-workload stand-ins always had.
   */
  readonly origSrc?: boolean;
}

/** The per-node inpod stand-in (inpod.ts): ztunnel >= 1.23, a ZDS client taking its pods from the node agent. */
export interface InpodStandInConfig {
  readonly node: string;
  /** JSON lines, one per connection, shared with any other stand-in of the node (O_APPEND). */
  readonly logPath: string;
  readonly pkiDir: string;
  /** Pod IPs in the mesh: outbound to them goes HBONE to <ip>:15008 (ztunnel learns this from istiod). */
  readonly meshIps: readonly string[];
  /** The node agent's ZDS socket (ztunnel's INPOD_UDS). */
  readonly zdsSocket: string;
  /** Spoof the client's address on inbound legs; false = ENABLE_ORIG_SRC=false. */
  readonly origSrc: boolean;
  /** The DNS proxy's zone: lower-case names (no trailing dot) -> addresses. */
  readonly dnsRecords: Readonly<Record<string, readonly string[]>>;
  /** "ip:port" (v6 as "[ip]:port") of the resolver for every other name; absent = SERVFAIL. */
  readonly dnsUpstream?: string;
  /** Rewritten (atomically) on every change of state: what launch.ts and tests wait on. */
  readonly statePath: string;
  /** How long a SIGTERM drain lets connections finish (ztunnel's default termination deadline: 5 s). */
  readonly drainDeadlineMs?: number;
  /**
   * PORT_READINESS, except for a second stand-in beside a running one: a real upgrade starts a new
   * ztunnel pod with its own netns, the testbed runs both in the one ztunnel pod.
   */
  readonly readinessPort: number;
}

/** What the per-node stand-in writes to its state file. */
export interface InpodStandInState extends ManagerState {
  readonly pid: number;
  /** Set once it is going away: "sigterm" or the protocol error it exits on. */
  readonly exiting?: string;
}
