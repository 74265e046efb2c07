// The loader's state file: what `ambpf pods` and `ambpf status` read to name the entries of the maps.
// The reconciler writes it after every pass (src/reconcile/reconciler.ts); src/status/state-file.ts
// reads and validates it.
import type { Problem } from './desired.ts';

export interface StateFile {
  readonly node: string;
  readonly updatedAt: string;
  readonly ztunnel: { name: string; namespace: string; ips: readonly string[] } | null;
  readonly pods: ReadonlyArray<{
    name: string;
    namespace: string;
    uid: string;
    ips: readonly string[];
    hostIfname: string | null;
    /** inpod with ZDS: whether ztunnel took the pod (acked), is being asked (pending), refused it
     * (nacked, with ztunnel's error) or is not connected (no-ztunnel). Absent otherwise. */
    zds?: { state: string; error?: string };
  }>;
  readonly problems: readonly Problem[];
}
