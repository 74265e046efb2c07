// Inbound tc on kernels without tcx (< 6.6), forced here with tcMode 'clsact' (review issue 6): a
// clsact filter has no pin, so detach, reconcile's view (inboundInterfaces) and uninstall must find
// it in the kernel; an upgraded loader replaces an older filter. Real traffic through the filter;
// everything in netns of our own.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BPF_CFLAGS, DEFAULT_SRC_DIR } from '../../src/bpf/build.ts';
import { listClsactFilters } from '../../src/bpf/datapath-clsact.ts';
import { openDatapath, uninstallDatapath } from '../../src/bpf/datapath.ts';
import { makeEnv, openNodeInbound } from './env.ts';

interface ClientOut {
  hello?: { port: number } | null;
  error?: string;
}
const APP = 8080;

t.test('inbound via clsact (no tcx): attach, see, detach, uninstall', { timeout: 90_000 }, async (t) => {
  const env = await makeEnv(t);
  const { b } = env.pods;
  const { dp } = await openNodeInbound(t, env, { tcMode: 'clsact' });
  await env.server('b', [String(APP)]);

  const filters = (): string =>
    execFileSync('nsenter', [`--net=${env.node}`, 'tc', 'filter', 'show', 'dev', b.hostIf, 'egress'], {
      encoding: 'utf8',
    });
  const landsOn = async (): Promise<number | undefined> => {
    const [out] = (await env.client('c', [b.ip, String(APP)])) as ClientOut[];
    return out?.hello?.port;
  };

  t.equal(dp.attachInbound(b.hostIf), 'created', 'clsact filter created');
  t.equal(dp.attachInbound(b.hostIf), 'adopted', 'a second attach finds it');
  t.notOk(existsSync(join(env.bpffs, 'links', `tc-${b.hostIf}`)), 'no tcx link pinned');
  t.match(filters(), /ambpf_tc_pod/, 'the filter sits on the veth');
  t.same(dp.inboundInterfaces(), [b.hostIf], 'inboundInterfaces sees the clsact filter');
  t.equal(await landsOn(), 15006, 'inbound is steered to ztunnel through the filter');

  t.ok(dp.detachInbound(b.hostIf), 'detach removes it');
  t.notMatch(filters(), /ambpf_tc_pod/, 'the filter is gone');
  t.notOk(dp.detachInbound(b.hostIf), 'a second detach finds nothing of ours');
  t.same(dp.inboundInterfaces(), [], 'nothing steered any more');
  t.equal(await landsOn(), APP, 'inbound goes straight to the pod');

  t.equal(dp.attachInbound(b.hostIf), 'created', 'attached again');
  // Reconcile passes trust what this loader attached (no ip/tc scan per pod event); the safety-net
  // pass rescans, so a filter removed behind ambpf's back is noticed and re-attached there.
  execFileSync('nsenter', [
    `--net=${env.node}`,
    'tc',
    'filter',
    'del',
    'dev',
    b.hostIf,
    'egress',
    'pref',
    '1',
    'handle',
    '0xa3bf',
    'bpf',
  ]);
  t.same(dp.inboundInterfaces(), [b.hostIf], 'between rescans the view is what ambpf attached');
  dp.rescanInbound();
  t.same(dp.inboundInterfaces(), [], 'a rescan sees the filter is gone');
  t.equal(dp.attachInbound(b.hostIf), 'created', 'and it is attached again');
  t.same(dp.inboundInterfaces(), [b.hostIf], 'the view follows the attach');
  // The name now belongs to another interface (a veth recreated under a deterministic name): the
  // filter stayed with the old one, so the view must not count the name as steered.
  const ipIn = (...args: string[]) => execFileSync('nsenter', [`--net=${env.node}`, 'ip', 'link', ...args]);
  const aside = `${b.hostIf.slice(0, 11)}-old`;
  ipIn('set', 'dev', b.hostIf, 'name', aside);
  ipIn('add', b.hostIf, 'type', 'veth', 'peer', 'name', `${b.hostIf.slice(0, 11)}-new`);
  t.same(dp.inboundInterfaces(), [], 'a same-named new interface is not taken as steered');
  ipIn('del', b.hostIf);
  ipIn('set', 'dev', aside, 'name', b.hostIf);
  dp.rescanInbound();
  t.same(dp.inboundInterfaces(), [b.hostIf], 'the original veth, with its filter, is seen again after a rescan');
  dp.close();
  const report = uninstallDatapath(env.bpffs, { netns: env.node });
  t.same(report.clsact, [b.hostIf], 'uninstall removed the clsact filter');
  t.notMatch(filters(), /ambpf_tc_pod/, 'no filter of ours is left on the veth');
  t.equal(await landsOn(), APP, 'inbound goes straight to the pod after uninstall');
});

t.test('an upgraded loader swaps an older clsact program for its own', { timeout: 90_000 }, async (t) => {
  const env = await makeEnv(t);
  const { b } = env.pods;
  // "The old version": the same source built with other flags (-mcpu=v2), so its code and tag differ.
  const dir = mkdtempSync(join(tmpdir(), 'ambpf-old-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const old = join(dir, 'ambpf_inbound.bpf.o');
  const clang = process.env['AMBPF_CLANG'] ?? 'clang-14';
  execFileSync(clang, [
    ...BPF_CFLAGS.map((f) => (f === '-mcpu=v3' ? '-mcpu=v2' : f)),
    '-I',
    '/usr/include/x86_64-linux-gnu',
    '-c',
    join(DEFAULT_SRC_DIR, 'ambpf_inbound.bpf.c'),
    '-o',
    old,
  ]);
  const before = await openDatapath({
    bpffs: env.bpffs,
    cgroup: env.cgroup,
    netns: env.node,
    tcMode: 'clsact',
    objects: { ambpf_inbound: old },
  });
  t.equal(before.attachInbound(b.hostIf), 'created', 'the old program is attached');
  before.close();
  const oldFilter = listClsactFilters(env.bpffs, env.node)[0];

  const { dp } = await openNodeInbound(t, env, { tcMode: 'clsact' });
  t.equal(dp.attachInbound(b.hostIf), 'replaced', 'the new loader replaces it');
  const now = listClsactFilters(env.bpffs, env.node);
  t.equal(now.length, 1, 'one filter of ours on the veth');
  t.not(now[0]?.progId, oldFilter?.progId, 'another program');
  t.equal(dp.attachInbound(b.hostIf), 'adopted', 'and keeps it on the next pass');
});
