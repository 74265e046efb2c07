// Reading the loader's state file (its type: src/state/state-file.ts; reconcile/reconciler.ts writes
// it after every pass): pod names for the map entries, and when the last reconcile happened. Missing
// is normal (a loader run without --state-file, or before its first pass); unreadable is an error
// worth a sentence.
import { readFileSync } from 'node:fs';
import type { StateFile } from '../state/state-file.ts';
import { StateFileError } from './errors.ts';

export const DEFAULT_STATE_FILE = '/run/ambpf/state.json';

export type StatePods = StateFile['pods'];

export interface LoadedState {
  readonly path: string;
  /** null when there is no state file at path. */
  readonly state: StateFile | null;
}

function isStateFile(v: unknown): v is StateFile {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  return (
    typeof o['node'] === 'string' &&
    typeof o['updatedAt'] === 'string' &&
    Array.isArray(o['pods']) &&
    Array.isArray(o['problems'])
  );
}

export function loadStateFile(path: string): LoadedState {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { path, state: null };
    throw new StateFileError(`cannot read the state file ${path}: ${(err as Error).message}.`, { path });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new StateFileError(
      `the state file ${path} is not valid JSON (${(err as Error).message}); is another program writing it?`,
      { path },
    );
  }
  if (!isStateFile(parsed)) {
    throw new StateFileError(
      `the state file ${path} lacks node, updatedAt, pods or problems; it was not written by ambpf run.`,
      { path },
    );
  }
  return { path, state: parsed };
}
