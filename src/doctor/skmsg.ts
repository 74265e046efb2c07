// A real probe for sockmap links (sk_msg attached to a sockhash by bpf_link_create, Linux 6.10+):
// a throwaway sockhash and a do-nothing sk_msg program. Nothing outside the probe sees either, so
// no netns is needed; both are gone when their fds close.
import { BpfLink, BpfMap, LibbpfError, RawProgram, MOV64_IMM, EXIT } from '../libbpf/index.ts';

export interface SkMsgLinkProbe {
  supported: boolean;
  detail: string;
}

export const SK_MSG_LINK_SINCE = '6.10';

export function probeSkMsgLink(): SkMsgLinkProbe {
  using map = BpfMap.create('sockhash', 4, 4, 1, { name: 'ambpf_probe' });
  using prog = RawProgram.load('sk_msg', [MOV64_IMM(0, 1 /* SK_PASS */), EXIT()]);
  try {
    BpfLink.create(prog.fd, map.fd, 'sk_msg_verdict', 'doctor sk_msg link probe').close();
    return { supported: true, detail: 'sockmap link created on a throwaway sockhash' };
  } catch (err) {
    if (err instanceof LibbpfError)
      return { supported: false, detail: `bpf_link_create(BPF_SK_MSG_VERDICT) failed with ${err.code}` };
    throw err;
  }
}
