// What /healthz checks: whether this loader can still do its job, as opposed to /readyz (has it
// finished its first reconcile). Each problem is one sentence for the probe's body and the log.
// Not a problem: a loader still waiting for its first sync (the startup probe and /readyz cover
// that), a ztunnel that has not connected yet (ztunnel's own readiness says so).
import { existsSync } from 'node:fs';

export interface HealthInputs {
  /** The pod source; for the Kubernetes watch, its staleness bound (the watchdog relists after it). */
  readonly source?: () => { synced: boolean; lastEventAgeMs: number | undefined };
  readonly staleAfterMs?: number;
  /** Pins the datapath needs (links of the cgroup hooks, the shared maps): a missing one was removed
   * under the loader, and a restart would re-create it. */
  readonly pins?: () => readonly string[];
  /** inpod with ZDS: why ztunnel cannot reach the agent's ZDS server (undefined: it can). */
  readonly zds?: () => string | undefined;
}

/**
 * The watch is called silent once it heard nothing for twice its staleness bound: the watchdog fired
 * at the first bound and relisted, and that relist brought nothing either (API server unreachable,
 * credentials revoked). Kubernetes sends a bookmark at least every minute on a quiet cluster.
 */
export function healthProblems(i: HealthInputs): string[] {
  const out: string[] = [];
  const src = i.source?.();
  if (
    src?.synced &&
    i.staleAfterMs !== undefined &&
    src.lastEventAgeMs !== undefined &&
    src.lastEventAgeMs > 2 * i.staleAfterMs
  ) {
    out.push(
      `the Kubernetes watch heard nothing for ${Math.round(src.lastEventAgeMs / 1000)} s, past its watchdog ` +
        `(relist after ${Math.round(i.staleAfterMs / 1000)} s): pod changes are not applied`,
    );
  }
  const missing = (i.pins?.() ?? []).filter((p) => !existsSync(p));
  if (missing.length > 0) {
    out.push(`pins missing: ${missing.join(', ')} (removed under the loader: a restart re-creates them)`);
  }
  const zds = i.zds?.();
  if (zds !== undefined) out.push(zds);
  return out;
}
