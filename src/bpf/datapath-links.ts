// Pinned links that survive the loader: attach once, and on every later start adopt what is pinned
// instead of attaching a second time (docs/architecture.md "Lifecycle": no duplicate attachments after restarts).
import { existsSync, mkdirSync, renameSync, unlinkSync } from 'node:fs';
import { BpfLink, LibbpfError, progInfoByFd, withFdById, type BpfProgram, type LinkInfo } from '../libbpf/index.ts';
import { logger } from '../log.ts';

const log = logger('datapath');

export type LinkOutcome = 'created' | 'adopted' | 'replaced';

export interface EnsureLinkOptions {
  /** Pin path, <bpffs>/links/<hook>. */
  pin: string;
  prog: BpfProgram;
  /** Make a fresh (unpinned) link. */
  attach: () => BpfLink;
  /** Whether a pinned link is attached where this one would be (same cgroup / netns / interface). */
  sameTarget: (info: LinkInfo) => boolean;
}

/** The tag (code hash) of program `id`; null when it is gone (treat as different). */
export function progTag(id: number): string | null {
  try {
    return withFdById('prog', id, (fd) => progInfoByFd(fd).tag);
  } catch {
    return null;
  }
}

function progTagOf(info: LinkInfo): string | null {
  return progTag(info.progId); // a defunct link's program is gone: null, different
}

/**
 * A new program version on the same target: bpf_link_update swaps it atomically, with no moment of
 * two programs and no gap. false when the kernel refuses (the caller then attaches anew).
 */
function swapProgram(link: BpfLink, prog: BpfProgram): boolean {
  try {
    link.update(prog);
    return true;
  } catch (err) {
    if (!(err instanceof LibbpfError)) throw err;
    log.debug({ err: err.message }, 'bpf_link_update refused; attaching a new link instead');
    return false;
  }
}

/**
 * Make sure exactly one link of `prog` sits at `pin`:
 * - nothing pinned: attach and pin (created);
 * - pinned on the same target with the same program code (tag): keep it (adopted), traffic never
 *   sees a gap;
 * - pinned on the same target with another program version: swap the program inside the link
 *   (bpf_link_update), atomically (replaced);
 * - otherwise (a link whose target vanished, or an update the kernel refused): attach the new link first,
 *   atomically rename its pin over the old one, then detach the old link (replaced). For a moment
 *   both run; every ambpf program is idempotent when run twice (connect4 sees ztunnel's address on the
 *   second run and bypasses it), so the overlap is harmless, while a detach-first order would let
 *   connections through unredirected.
 */
export function ensurePinnedLink(o: EnsureLinkOptions): LinkOutcome {
  mkdirSync(o.pin.slice(0, o.pin.lastIndexOf('/')), { recursive: true });
  if (!existsSync(o.pin)) {
    const link = o.attach();
    try {
      link.pin(o.pin);
    } finally {
      link.close(); // the pin keeps it attached
    }
    return 'created';
  }
  const old = BpfLink.openPinned(o.pin);
  try {
    const info = old.info();
    const same = o.sameTarget(info);
    if (same && progTagOf(info) === o.prog.tag) return 'adopted';
    if (same && swapProgram(old, o.prog)) {
      log.info({ pin: o.pin, reason: 'new program version' }, 'updated pinned link in place');
      return 'replaced';
    }
    const fresh = o.attach();
    // bpffs refuses names containing '.', hence the suffix style.
    const tmp = `${o.pin}_new`;
    try {
      fresh.pin(tmp);
      renameSync(tmp, o.pin);
    } catch (err) {
      if (existsSync(tmp)) unlinkSync(tmp);
      throw err;
    } finally {
      fresh.close();
    }
    try {
      old.detach();
    } catch (err) {
      // A defunct link (its cgroup/netns/interface is gone) cannot be detached again: fine.
      if (!(err instanceof LibbpfError)) throw err;
    }
    log.info({ pin: o.pin, reason: same ? 'new program version' : 'target changed' }, 'replaced pinned link');
    return 'replaced';
  } finally {
    old.close();
  }
}

/** Detach and unpin the link pinned at path; false when nothing was pinned there. */
export function removePinnedLink(pin: string): boolean {
  if (!existsSync(pin)) return false;
  const link = BpfLink.openPinned(pin);
  try {
    try {
      link.detach();
    } catch (err) {
      if (!(err instanceof LibbpfError)) throw err; // already defunct
    }
    link.unpin(pin);
  } finally {
    link.close();
  }
  return true;
}
