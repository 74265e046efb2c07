// Inbound tc on kernels without tcx (< 6.6), forced here with tcMode 'clsact' (review issue 6): a
// clsact filter has no pin, so detach, reconcile's view (inboundInterfaces) and uninstall must find
// it in the kernel. Real traffic through the filter; everything in netns of our own.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { uninstallDatapath } from '../../src/bpf/datapath.ts';
import { makeEnv, openNodeInbound } from './env.ts';

interface ClientOut { hello?: { port: number } | null; error?: string }
const APP = 8080;

t.test('inbound via clsact (no tcx): attach, see, detach, uninstall', { timeout: 90_000 }, async (t) => {
  const env = await makeEnv(t);
  const { b } = env.pods;
  const { dp } = await openNodeInbound(t, env, { tcMode: 'clsact' });
  await env.server('b', [String(APP)]);

  const filters = (): string => execFileSync('nsenter', [`--net=${env.node}`, 'tc', 'filter', 'show', 'dev', b.hostIf, 'egress'], { encoding: 'utf8' });
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
  dp.close();
  const report = uninstallDatapath(env.bpffs, { netns: env.node });
  t.same(report.clsact, [b.hostIf], 'uninstall removed the clsact filter');
  t.notMatch(filters(), /ambpf_tc_pod/, 'no filter of ours is left on the veth');
  t.equal(await landsOn(), APP, 'inbound goes straight to the pod after uninstall');
});
