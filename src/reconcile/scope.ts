// Which pods a new snapshot changed since the last pass: the scope of a fast-path pass (one CNI ADD,
// one watch event, one pods-file edit touch one pod, and that pod is all the pass needs to look at).
// Pure: a pod's fingerprint is everything a pass reads about it from the cluster (its object as the
// source gave it, its desired entry, the netns CNI handed over), so a pod whose fingerprint did not
// change needs nothing from a pass that a full one would do.
import type { ClusterSnapshot, KubeObjectLike } from '../sources/types.ts';
import type { DesiredState } from '../state/desired.ts';

/** What a pass saw of the cluster, per pod, to compare the next snapshot with. */
export interface PassMemo {
  /** uid -> fingerprint, for every pod in the mesh or with a CNI netns hint. */
  readonly pods: ReadonlyMap<string, string>;
  /** ztunnel's fingerprint ('' without one): a change is a full pass (every pod's target names it). */
  readonly ztunnel: string;
}

/** The object's resourceVersion (the API server bumps it on every change), else the object itself. */
function fingerprint(obj: KubeObjectLike | undefined): string {
  if (!obj) return '';
  const rv = obj.metadata?.resourceVersion;
  return typeof rv === 'string' && rv !== '' ? `rv:${rv}` : JSON.stringify(obj);
}

export function memoOf(snapshot: ClusterSnapshot, desired: DesiredState, hints: ReadonlyMap<string, string>): PassMemo {
  const wanted = new Set([...desired.ambientPods.map((p) => p.uid), ...hints.keys()]);
  if (desired.ztunnel) wanted.add(desired.ztunnel.uid);
  const objects = new Map<string, KubeObjectLike>();
  for (const obj of snapshot.pods) {
    const uid = obj.metadata?.uid;
    if (typeof uid === 'string' && wanted.has(uid)) objects.set(uid, obj);
  }
  const entries = new Map(desired.ambientPods.map((p) => [p.uid, JSON.stringify(p)]));
  const pods = new Map<string, string>();
  for (const uid of wanted) {
    if (uid === desired.ztunnel?.uid) continue;
    pods.set(uid, `${fingerprint(objects.get(uid))}\n${entries.get(uid) ?? ''}\n${hints.get(uid) ?? ''}`);
  }
  const z = desired.ztunnel;
  return { pods, ztunnel: z ? `${fingerprint(objects.get(z.uid))}\n${JSON.stringify(z)}` : '' };
}

/** The uids whose fingerprint differs (added, changed, gone); undefined when ztunnel changed (all of them). */
export function changedPods(prev: PassMemo, next: PassMemo): Set<string> | undefined {
  if (prev.ztunnel !== next.ztunnel) return undefined;
  const changed = new Set<string>();
  for (const [uid, f] of next.pods) if (prev.pods.get(uid) !== f) changed.add(uid);
  for (const uid of prev.pods.keys()) if (!next.pods.has(uid)) changed.add(uid);
  return changed;
}
