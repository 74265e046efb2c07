// What both inspection views do around their own work: refuse clearly when ambpf is not installed,
// read the state file, open the pinned maps for the duration of the view and close them after.
import { openPinnedMaps, type DatapathMaps } from '../bpf/datapath-maps.ts';
import type { StateFile } from '../state/state-file.ts';
import type { ViewOptions } from './args.ts';
import { requireInstalled } from './installed.ts';
import { loadStateFile } from './state-file.ts';

export function withPinnedView<T>(o: ViewOptions, fn: (maps: DatapathMaps, state: StateFile | null) => T): T {
  requireInstalled(o.bpffs);
  const { state } = loadStateFile(o.stateFile);
  const maps = openPinnedMaps(o.bpffs);
  try {
    return fn(maps, state);
  } finally {
    maps.close();
  }
}
