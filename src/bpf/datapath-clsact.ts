// ambpf's inbound tc filters on kernels without tcx (Linux < 6.6). A clsact filter is not a bpf_link:
// it cannot be pinned, so nothing under <bpffs>/links/ says where one sits. This module finds them
// in the kernel instead — on egress of every interface of a netns, the filter with ambpf's fixed
// identity (handle 0xa3bf, priority 1) whose program is ambpf's tc program AND uses the maps pinned
// under this bpffs directory (so a second ambpf, a test's, on the same machine is never touched) —
// and removes them.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { BpfMap, LibbpfError, TcAttachment, progInfoByFd, withFdById } from '../libbpf/index.ts';
import { AmbpfError } from '../errors.ts';
import { mapPin } from './pins.ts';
import { PROGRAMS } from './names.ts';

/** clsact identity of our inbound filter, fixed so a later process can find and remove it. */
export const CLSACT_HANDLE = 0xa3bf;
export const CLSACT_PRIORITY = 1;
/** The program attachInbound puts there (bpf/ambpf_inbound.bpf.c). */
export const TC_PROGRAM = PROGRAMS.tcPod;

export class ClsactError extends AmbpfError {
  override readonly name: string = 'ClsactError';
}

export interface ClsactFilter {
  ifname: string;
  ifindex: number;
  progId: number;
}

interface TcFilterJson {
  kind?: string;
  pref?: number;
  options?: { handle?: string; bpf_name?: string; prog?: { id?: number } };
}

/** Run iproute2 in `netns` (a /run/netns or /proc path; undefined = this process's netns). */
function iproute(netns: string | undefined, argv: string[]): string {
  const [cmd, ...args] = netns ? ['nsenter', `--net=${netns}`, ...argv] : argv;
  try {
    return execFileSync(cmd as string, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; status?: number };
    throw new ClsactError(
      `${argv.join(' ')} failed${netns ? ` in ${netns}` : ''}: ${(e.stderr ?? '').trim() || `exit ${e.status}`}.`,
      { netns, command: argv.join(' ') },
    );
  }
}

/** The map id behind <bpffs>/ambpf_pods, which every ambpf program of that install uses. */
function podsMapId(bpffs: string): number | undefined {
  const pin = mapPin(bpffs, 'ambpf_pods');
  if (!existsSync(pin)) return undefined;
  const m = BpfMap.openPinned(pin);
  try {
    return m.info().id;
  } finally {
    m.close();
  }
}

function usesMap(progId: number, mapId: number): boolean {
  try {
    return withFdById('prog', progId, (fd) => progInfoByFd(fd).mapIds.includes(mapId));
  } catch (err) {
    if (err instanceof LibbpfError) return false; // the program went away meanwhile
    throw err;
  }
}

/** ambpf's clsact filters of this bpffs install on egress of the interfaces in `netns`. */
export function listClsactFilters(bpffs: string, netns: string | undefined): ClsactFilter[] {
  const mapId = podsMapId(bpffs);
  if (mapId === undefined) return []; // no maps pinned here: no program of this install exists
  if (netns !== undefined && !existsSync(netns)) return []; // the netns and its interfaces are gone
  const links = JSON.parse(iproute(netns, ['ip', '-j', 'link', 'show'])) as Array<{ ifindex: number; ifname: string }>;
  const found: ClsactFilter[] = [];
  for (const { ifindex, ifname } of links) {
    let filters: TcFilterJson[];
    try {
      filters = JSON.parse(
        iproute(netns, ['tc', '-j', 'filter', 'show', 'dev', ifname, 'egress']) || '[]',
      ) as TcFilterJson[];
    } catch {
      continue; // no clsact qdisc there, or the interface vanished meanwhile
    }
    for (const f of filters) {
      const progId = f.options?.prog?.id;
      if (f.kind !== 'bpf' || f.pref !== CLSACT_PRIORITY || Number(f.options?.handle) !== CLSACT_HANDLE) continue;
      if (!f.options?.bpf_name?.startsWith(TC_PROGRAM) || progId === undefined || !usesMap(progId, mapId)) continue;
      found.push({ ifname, ifindex, progId });
    }
  }
  return found;
}

/** Remove one interface's filter (ENOENT: already gone, fine). */
export function detachClsact(ifindex: number, netns: string | undefined): void {
  new TcAttachment({
    mode: 'clsact',
    ifindex,
    direction: 'egress',
    link: null,
    handle: CLSACT_HANDLE,
    priority: CLSACT_PRIORITY,
    netns,
  }).detach();
}

/** Remove every filter listClsactFilters finds; returns the interface names. */
export function removeClsactFilters(bpffs: string, netns: string | undefined): string[] {
  const removed: string[] = [];
  for (const f of listClsactFilters(bpffs, netns)) {
    detachClsact(f.ifindex, netns);
    removed.push(f.ifname);
  }
  return removed;
}
