// `ambpf bench --quick` on the inpod topology (checks in quick-run.ts), with the A/A control, the
// nftables path, the end-to-end phase, the control plane and the BPF profile.
import t from 'tap';
import { QUICK_RUN_MS, quickRun } from './quick-run.ts';

t.test('ambpf bench --quick, inpod topology', { timeout: QUICK_RUN_MS + 15_000 }, (t) =>
  quickRun(t, 'inpod', ['direct', 'direct-aa', 'iptables', 'nftables', 'ebpf'], true),
);
