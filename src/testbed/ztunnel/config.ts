// What a stand-in process is told at start (one JSON argument), and ztunnel's fixed numbers.

export const PORT_OUTBOUND = 15001;
export const PORT_INBOUND_PLAINTEXT = 15006;
export const PORT_HBONE = 15008;
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
  /** IP_TRANSPARENT on the listeners: needed when TPROXY or sk_assign hands over foreign destinations (node topology). */
  readonly transparent: boolean;
  /** Pod IPs in the mesh: outbound to them goes HBONE to <ip>:15008, to anything else passthrough (ztunnel's workload lookup). */
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
