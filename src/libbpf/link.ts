// BpfLink: a kernel bpf_link held by fd. Closing an unpinned link detaches it; a pinned link stays
// attached after the process exits until its pin is removed (restart-safe attachments).
import { unlinkSync } from 'node:fs';
import { ERRNO } from '../errors.ts';
import { raw } from './ffi.ts';
import { bpf_link_update_opts, optsBuffer } from './structs.ts';
import { LibbpfError, check } from './errors.ts';
import { Handle, closeFd } from './handle.ts';
import { ATTACH_TYPES, nameOf, type AttachTypeName } from './constants.ts';
import { linkInfoByFd, fdById, kindOfFd, openPinnedFd, pinFd, type LinkInfo } from './info.ts';

/** linux/bpf.h: only replace when the current program is the one named (bpf_link_update). */
const BPF_F_REPLACE = 1 << 2;

export class BpfLink extends Handle {
  readonly #fd: number;
  readonly #label: string;
  #pinnedPath: string | null = null;

  private constructor(fd: number, label: string) {
    super();
    this.#fd = fd;
    this.#label = label;
  }

  /** Take ownership of a link fd (from bpf_link_create). */
  static fromFd(fd: number, label = `fd ${fd}`): BpfLink {
    return new BpfLink(fd, label);
  }

  /**
   * bpf_link_create for targets libbpf 1.1 has no attach helper for: a sockmap/sockhash fd with
   * sk_msg_verdict (Linux 6.10+), an ifindex with tcx. Kernels without that link type answer EINVAL.
   */
  static create(progFd: number, targetFd: number, attachType: AttachTypeName | number, label?: string): BpfLink {
    const t = typeof attachType === 'number' ? attachType : ATTACH_TYPES[attachType];
    const what = label ?? `${nameOf(ATTACH_TYPES, t)} on fd ${targetFd}`;
    const fd = raw.bpf_link_create(progFd, targetFd, t, null) as number;
    if (fd < 0) throw new LibbpfError('bpf_link_create', -fd, { link: what });
    return new BpfLink(fd, what);
  }

  /** Open the link pinned at path. */
  static openPinned(path: string): BpfLink {
    const fd = openPinnedFd(path);
    if (kindOfFd(fd) !== 'link') {
      closeFd(fd);
      throw new LibbpfError('bpf_obj_get', ERRNO.EINVAL, { path, hint: `${path} is not a pinned BPF link` });
    }
    const l = new BpfLink(fd, path);
    l.#pinnedPath = path;
    return l;
  }

  static fromId(id: number): BpfLink {
    return new BpfLink(fdById('link', id), `id ${id}`);
  }

  protected describe(): string {
    return `link ${this.#label}`;
  }

  protected release(): void {
    closeFd(this.#fd);
  }

  get fd(): number {
    this.ensureOpen();
    return this.#fd;
  }

  get pinPath(): string | null {
    return this.#pinnedPath;
  }

  info(): LinkInfo {
    return linkInfoByFd(this.fd);
  }

  get id(): number {
    return this.info().id;
  }

  pin(path: string): void {
    pinFd(this.fd, path, { link: this.#label });
    this.#pinnedPath = path;
  }

  /** Remove the pin; the link detaches once the last fd is closed too. */
  unpin(path: string | null = this.#pinnedPath): void {
    this.ensureOpen();
    if (!path) throw new LibbpfError('unpin', ERRNO.EINVAL, { link: this.#label, hint: 'the link is not pinned' });
    try {
      unlinkSync(path);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new LibbpfError('unlink', e.errno ? -e.errno : ERRNO.ENOENT, { link: this.#label, path });
    }
    if (path === this.#pinnedPath) this.#pinnedPath = null;
  }

  /**
   * Swap the program behind this link in place (bpf_link_update): the hook never runs without a
   * program, unlike a detach + attach. With `expectOld`, the kernel only swaps when the link still
   * runs that program (BPF_F_REPLACE), so two updaters cannot silently overwrite each other; it
   * answers EPERM otherwise. Accepts anything with a program fd (BpfProgram, RawProgram).
   */
  update(prog: { readonly fd: number }, expectOld?: { readonly fd: number }): void {
    const opts = expectOld
      ? optsBuffer(bpf_link_update_opts, { flags: BPF_F_REPLACE, old_prog_fd: expectOld.fd })
      : null;
    check('bpf_link_update', raw.bpf_link_update(this.fd, prog.fd, opts) as number, {
      link: this.#label,
      hint: expectOld
        ? 'the link no longer runs the expected program, or the new program does not fit this hook'
        : undefined,
    });
  }

  /** Detach now (even while pinned or held elsewhere); the link object stays until closed/unpinned. */
  detach(): void {
    check('bpf_link_detach', raw.bpf_link_detach(this.fd) as number, { link: this.#label });
  }
}
