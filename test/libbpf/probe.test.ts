// Feature probes: real loads decide helper availability (libbpf 1.1's own helper probe misreads
// the wording of newer verifiers), raw program loads report the verifier's reason.
import t from 'tap';
import {
  probeProgType,
  probeMapType,
  probeHelperByLoad,
  RawProgram,
  MOV64_IMM,
  CALL,
  EXIT,
  HELPERS,
  LibbpfError,
} from '../../src/libbpf/index.ts';

t.test('program and map types ambpf needs are present', async (t) => {
  for (const p of ['cgroup_sock_addr', 'sock_ops', 'sk_msg', 'sched_cls', 'sk_lookup'] as const)
    t.equal(probeProgType(p), true, p);
  for (const m of ['hash', 'sockhash', 'sk_storage'] as const) t.equal(probeMapType(m), true, m);
});

t.test('helper probes tell allowed from refused by a real load', async (t) => {
  t.equal(probeHelperByLoad('sched_cls', 'redirect'), true, 'tc may redirect');
  t.equal(probeHelperByLoad('cgroup_sock_addr', 'redirect'), false, 'connect4 may not');
  t.equal(probeHelperByLoad('sk_msg', 'msg_redirect_hash'), true);
  t.equal(probeHelperByLoad('sched_cls', 'msg_redirect_hash'), false);
});

t.test('raw loads: a valid program gets an fd, a refused one a LibbpfError with the reason', async (t) => {
  using ok = RawProgram.load('sched_cls', [MOV64_IMM(0, 0), EXIT()]);
  t.ok(ok.fd > 0);
  const err = t.throws(() => RawProgram.load('cgroup_sock_addr', [CALL(HELPERS.redirect), EXIT()])) as LibbpfError;
  t.type(err, LibbpfError);
  t.equal(err.code, 'EINVAL');
  t.match(err.message, /bpf_redirect#23/);
  const r = RawProgram.tryLoad('sched_cls', [EXIT()]);
  t.equal(r.prog, null, 'exit without setting r0 is refused');
  t.match(r.log, /R0 !read_ok/);
});
