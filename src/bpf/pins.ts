// Where ambpf pins what under its bpffs directory: the one place that names the pins (the datapath
// writes them, uninstall and the status views read them back, and a restarted loader finds its
// state in them, so every reader must agree with the writer).
//
//   <bpffs>/<map>                     every map, by the name the objects give it (ambpf_*)
//   <bpffs>/links/<hook>              the cgroup hooks (connect4, ..., sockops; CGROUP_HOOKS; inpod adds
//                                     sendmsg4/6, recvmsg4/6 and release: INPOD_CGROUP_HOOKS)
//   <bpffs>/links/sk_lookup           node topology: sk_lookup in ztunnel's netns
//   <bpffs>/links/tc-<ifname>         node topology: tcx on a mesh pod's host-side veth
//   <bpffs>/links/inpod-<cookie>      inpod topology: sk_lookup in a pod's netns (netns cookie)
//   <bpffs>/links/inpod-<cookie>-tc   inpod topology: tcx on the pod's eth0 (kubelet's probes)
//   <bpffs>/links/inpod-<cookie>-lo   retired: an older ambpf's tcx egress on the pod's lo, removed when
//                                     the pod is armed or released (its jobs moved to connect4/6,
//                                     sendmsg4/6 and sock_release)
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { AnyMapName } from './names.ts';

const LINKS = 'links';
export const SK_LOOKUP_LINK = 'sk_lookup';
const TC = 'tc-';
const INPOD = 'inpod-';
const INPOD_TC = '-tc';
const INPOD_LO = '-lo';

/** A link pin name, read back. */
export type LinkPin =
  | { readonly kind: 'sk_lookup' }
  | { readonly kind: 'tc'; readonly ifname: string }
  | { readonly kind: 'inpod'; readonly netnsCookie: bigint }
  | { readonly kind: 'inpod-tc'; readonly netnsCookie: bigint }
  | { readonly kind: 'inpod-lo'; readonly netnsCookie: bigint };

export const tcLinkName = (ifname: string): string => `${TC}${ifname}`;
export const inpodLinkName = (netnsCookie: bigint): string => `${INPOD}${netnsCookie}`;
export const inpodTcLinkName = (netnsCookie: bigint): string => `${INPOD}${netnsCookie}${INPOD_TC}`;
export const inpodLoLinkName = (netnsCookie: bigint): string => `${INPOD}${netnsCookie}${INPOD_LO}`;

/** What a pin under links/ is, from its name; undefined for a cgroup hook's pin or a name not ambpf's. */
export function parseLinkName(name: string): LinkPin | undefined {
  if (name === SK_LOOKUP_LINK) return { kind: 'sk_lookup' };
  if (name.startsWith(TC) && name.length > TC.length) return { kind: 'tc', ifname: name.slice(TC.length) };
  const inpod = /^inpod-(\d+)(-tc|-lo)?$/.exec(name);
  if (inpod)
    return {
      kind: inpod[2] === INPOD_TC ? 'inpod-tc' : inpod[2] === INPOD_LO ? 'inpod-lo' : 'inpod',
      netnsCookie: BigInt(inpod[1]!),
    };
  return undefined;
}

export const mapPin = (bpffs: string, map: AnyMapName): string => join(bpffs, map);
export const linksDir = (bpffs: string): string => join(bpffs, LINKS);
export const linkPin = (bpffs: string, name: string): string => join(bpffs, LINKS, name);

/** The pin names under <bpffs>/links, sorted; none when the directory does not exist. */
export function linkNames(bpffs: string): string[] {
  const dir = linksDir(bpffs);
  return existsSync(dir) ? readdirSync(dir).sort() : [];
}
