// Kernel lockdown (security/lockdown): in confidentiality mode the kernel refuses bpf_probe_read_kernel
// to every program (kernel/bpf/helpers.c asks security_locked_down(LOCKDOWN_BPF_READ_KERNEL)), and
// ambpf_inpod_release needs it. No lockdown LSM, or integrity mode, allows it.
import { readFileSync } from 'node:fs';

export const LOCKDOWN_PATH = '/sys/kernel/security/lockdown';

/** Whether kernel memory reads from BPF are refused: the lockdown file marks [confidentiality]. */
export function kernelMemoryLocked(path = LOCKDOWN_PATH): boolean {
  try {
    return /\[confidentiality\]/.test(readFileSync(path, 'utf8'));
  } catch {
    return false; // no securityfs or no lockdown LSM
  }
}
