// Istio's redirection on the testbed: the benchmark's baselines and the proof that testbed and
// stand-in are right on a path we did not invent. `installIptablesPath(tb)` picks the rule set for the
// testbed's topology; `installNftablesPath(tb)` is Istio 1.28's native nftables backend (in-pod only,
// as in Istio). `remove…Path(tb)` removes exactly what was installed (also from another process: what
// is needed is kept in <runDir>/<backend>-path.json).
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Testbed } from '../testbed/testbed.ts';
import type { TestbedInfo } from '../testbed/types.ts';
import { BaselineError, install, nftTables, remove, type NetnsRules } from './ruleset.ts';
import { inpodPathRules } from './inpod.ts';
import { nodeRules, ztunnelPodRules } from './node.ts';
import type { Backend } from './istio-rules.ts';

export { iptablesSave, nftRuleset, BaselineError, type NetnsRules } from './ruleset.ts';
export { BACKENDS, ISTIO_DEFAULTS, type Backend, type IstioConfig } from './istio-rules.ts';

/** Every netns the iptables path touches for this testbed, with its rules. */
export function iptablesPathRules(info: TestbedInfo): NetnsRules[] {
  if (info.topology === 'inpod') return inpodPathRules(info, 'iptables');
  return info.ztunnels.flatMap((z) => [nodeRules(info, z.node), ztunnelPodRules(info, z.node)]);
}

/** Every netns the nftables path touches (in-pod topology only: Istio has no node-topology nftables). */
export function nftablesPathRules(info: TestbedInfo): NetnsRules[] {
  if (info.topology !== 'inpod') {
    throw new BaselineError(
      'build the nftables path',
      info.runDir,
      new Error("Istio's nftables backend exists for the in-pod topology only"),
    );
  }
  return inpodPathRules(info, 'nftables');
}

export function pathRules(info: TestbedInfo, backend: Backend): NetnsRules[] {
  return backend === 'iptables' ? iptablesPathRules(info) : nftablesPathRules(info);
}

function stateFile(info: TestbedInfo, backend: Backend): string {
  return join(info.runDir, `${backend}-path.json`);
}

export async function installPath(tb: Testbed, backend: Backend): Promise<void> {
  const rules = pathRules(tb.info, backend);
  const before: Record<string, string[]> = {};
  try {
    for (const r of rules) {
      // Recorded before installing, so a half-made install is still removed exactly.
      before[r.netnsPath] = await nftTables(r.netnsPath);
      await install(r);
    }
  } finally {
    writeFileSync(stateFile(tb.info, backend), JSON.stringify(before));
  }
}

export async function removePath(tb: Testbed, backend: Backend): Promise<void> {
  const file = stateFile(tb.info, backend);
  if (!existsSync(file)) return;
  const before = JSON.parse(readFileSync(file, 'utf8')) as Record<string, string[]>;
  for (const r of pathRules(tb.info, backend).reverse()) {
    const tables = before[r.netnsPath];
    if (tables !== undefined) await remove(r, tables);
  }
  rmSync(file, { force: true });
}

export const installIptablesPath = (tb: Testbed): Promise<void> => installPath(tb, 'iptables');
export const removeIptablesPath = (tb: Testbed): Promise<void> => removePath(tb, 'iptables');
export const installNftablesPath = (tb: Testbed): Promise<void> => installPath(tb, 'nftables');
export const removeNftablesPath = (tb: Testbed): Promise<void> => removePath(tb, 'nftables');
