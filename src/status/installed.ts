// Is ambpf there at all? The inspection views read pins only; they say plainly when there are none
// instead of surfacing bpf_obj_get's ENOENT for the first map they try.
import { existsSync } from 'node:fs';
import { MAP_NAMES } from '../bpf/datapath-maps.ts';
import { mapPin } from '../bpf/pins.ts';
import { NotInstalledError } from './errors.ts';

/** Throws NotInstalledError unless every map of ambpf's contract is pinned under bpffs. */
export function requireInstalled(bpffs: string): void {
  const missing = MAP_NAMES.filter((n) => !existsSync(mapPin(bpffs, n)));
  if (missing.length === 0) return;
  throw new NotInstalledError(bpffs, missing, missing.length < MAP_NAMES.length);
}
