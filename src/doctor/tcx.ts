// A real tcx probe: create a tcx link on the loopback of a throwaway netns of our own (never on
// the machine's interfaces). Kernels before 6.6 answer EINVAL for the unknown attach type.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { withNetns, RawProgram, MOV64_IMM, EXIT, attachTcx, LibbpfError } from '../libbpf/index.ts';

export interface TcxProbe {
  supported: boolean;
  detail: string;
}

export function probeTcx(): TcxProbe {
  const ns = `ambpf-doctor-${process.pid}-${randomBytes(3).toString('hex')}`;
  try {
    execFileSync('ip', ['netns', 'add', ns], { stdio: 'ignore', timeout: 10_000 });
  } catch {
    return {
      supported: false,
      detail: 'could not create a throwaway netns to probe (is iproute2 installed, are we root?)',
    };
  }
  try {
    using prog = RawProgram.load('sched_cls', [MOV64_IMM(0, 0), EXIT()]);
    return withNetns(`/run/netns/${ns}`, () => {
      try {
        const link = attachTcx(prog.fd, 1 /* lo */, 'ingress', 'doctor tcx probe');
        link.close();
        return { supported: true, detail: 'tcx link created on a throwaway netns' };
      } catch (err) {
        if (err instanceof LibbpfError)
          return { supported: false, detail: `bpf_link_create(BPF_TCX_INGRESS) failed with ${err.code}` };
        throw err;
      }
    });
  } finally {
    try {
      execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 10_000 });
    } catch {
      // nothing more to do: the name carries our pid
    }
  }
}
