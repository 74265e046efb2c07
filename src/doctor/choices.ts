// How the loader attaches on this kernel, decided by the same real probes it relies on (not by
// version numbers): what `ambpf doctor` reports under "Loader choices". Pure, so the choices for an
// older kernel can be checked without one.
import type { TcxProbe } from './tcx.ts';
import type { SkMsgLinkProbe } from './skmsg.ts';
import { SK_MSG_LINK_SINCE } from './skmsg.ts';
import { TCX_SINCE } from './features.ts';
import { versionAtLeast } from './system.ts';

/** The oldest kernel every ambpf program loads, attaches and passes its functional check on (docs/kernels.md). */
export const MIN_KERNEL = '5.10';

export interface KernelChoice {
  readonly what: 'minimum kernel' | 'tc attach' | 'sk_msg attach' | 'inpod IPv6' | 'node IPv6' | 'early close';
  readonly choice: string;
  readonly why: string;
}

export function kernelChoices(
  kernel: string,
  tcx: TcxProbe,
  skMsgLink: SkMsgLinkProbe,
  kernelMemoryLocked = false,
): KernelChoice[] {
  const supported = versionAtLeast(kernel, MIN_KERNEL);
  return [
    {
      what: 'minimum kernel',
      choice: MIN_KERNEL,
      why: supported
        ? `this kernel (${kernel}) is supported: the matrix in docs/kernels.md proves ${MIN_KERNEL}, 6.1, 6.12 and 6.18`
        : `this kernel (${kernel}) is older than ${MIN_KERNEL}, the oldest the kernel matrix proves (docs/kernels.md)`,
    },
    tcx.supported
      ? {
          what: 'tc attach',
          choice: 'tcx link',
          why: `tcx links work here (${TCX_SINCE}+): pinned per interface, they coexist with other tc programs and survive the loader`,
        }
      : {
          what: 'tc attach',
          choice: 'clsact filter',
          why: `no tcx links here (${tcx.detail}; tcx needs ${TCX_SINCE}+): a clsact filter with ambpf's fixed handle`,
        },
    {
      what: 'sk_msg attach',
      choice: 'prog_attach',
      why:
        'on every kernel: the program lives as long as the pinned sockhash, which is all a link would give; ' +
        (skMsgLink.supported
          ? `sockmap links (${SK_MSG_LINK_SINCE}+) work here too`
          : `sockmap links need ${SK_MSG_LINK_SINCE}+ (${skMsgLink.detail})`),
    },
    // The kernel matrix proves IPv6 capture (connect6 to the pod's IPv6 address, IP6T_SO_ORIGINAL_DST,
    // sk_lookup of IPv6 inbound, ztunnel's spoofed legs at connect6) from 5.10 on; only the probe program
    // on the pod's eth0 needs tcx, for both families.
    tcx.supported
      ? {
          what: 'inpod IPv6',
          choice: 'as IPv4',
          why:
            "connect6 to the pod's IPv6 address, IP6T_SO_ORIGINAL_DST, sk_lookup inbound, ztunnel's spoofed " +
            'IPv6 legs and IPv6 probes (hop limit 64, tcx)',
        }
      : {
          what: 'inpod IPv6',
          choice: 'as IPv4, without probes',
          why:
            `IPv6 is captured both ways and ztunnel's spoofed legs reach the app (${MIN_KERNEL}+), but without ` +
            `tcx (${TCX_SINCE}+) the probe program on the pod's eth0 is not attached, for IPv4 and IPv6 alike: ` +
            "kubelet's probes go through ztunnel",
        },
    // ambpf_inpod_release reads the closing socket's own port with bpf_probe_read_kernel (src/bpf/lockdown.ts).
    kernelMemoryLocked
      ? {
          what: 'early close',
          choice: 'not kept',
          why:
            'lockdown=confidentiality refuses bpf_probe_read_kernel, so ambpf_inpod_release is not loaded: a ' +
            "client that closes before ztunnel's accept() loses that connection",
        }
      : {
          what: 'early close',
          choice: 'sock_release',
          why: "a client that closes before ztunnel's accept() keeps its original destination for ztunnel",
        },
    // The node topology's IPv6 is the same programs as its IPv4 (tcx or a clsact filter alike), proven by
    // the matrix from 5.10 on; what it needs is a dual-stack ztunnel, not a newer kernel.
    {
      what: 'node IPv6',
      choice: 'as IPv4',
      why:
        "connect6 to ztunnel's IPv6 address, IP6T_SO_ORIGINAL_DST, inbound steered by tc into ztunnel's netns " +
        `and handed to its [::] listeners by sk_lookup, the original address kept (${MIN_KERNEL}+); ztunnel needs ` +
        'an IPv4 address too (an IPv6-only ztunnel cannot serve the node topology)',
    },
  ];
}
