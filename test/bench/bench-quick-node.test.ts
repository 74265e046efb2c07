// `ambpf bench --quick` on the node topology (checks in quick-run.ts): the splice path, no
// end-to-end phase or control plane (the inpod file covers those); and the usage errors.
import t from 'tap';
import { AMBPF, QUICK_RUN_MS, quickRun, run } from './quick-run.ts';

t.test('ambpf bench --quick, node topology', { timeout: QUICK_RUN_MS + 15_000 }, (t) =>
  quickRun(t, 'node', ['direct', 'iptables', 'ebpf', 'ebpf-splice'], false),
);

t.test('usage errors are sentences, exit code 2', async (t) => {
  for (const [args, msg] of [
    [['--paths', 'direct,bogus'], /--paths: 'bogus' is not one of/],
    [['--rounds', '0'], /--rounds must be a whole number/],
    [['--topology', 'mesh'], /--topology must be node or inpod, not 'mesh'/],
    [['--paths', 'direct,nftables'], /nftables is Istio's in-pod backend; use it with --topology inpod/],
  ] as const) {
    const r = await run(AMBPF, ['bench', ...args]).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => e,
    );
    t.equal(r.code, 2, args.join(' '));
    t.match(r.stderr, msg);
  }
});
