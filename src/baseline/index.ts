// Istio's iptables redirection on the testbed: the benchmark's baseline and the proof that testbed and
// stand-in are right on a path we did not invent. `installIptablesPath(tb)` picks the rule set for the
// testbed's topology; `removeIptablesPath(tb)` removes exactly it (also from another process: what is
// needed is kept in <runDir>/iptables-path.json).
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Testbed } from '../testbed/testbed.ts';
import type { TestbedInfo } from '../testbed/types.ts';
import { install, nftTables, remove, type NetnsRules } from './ruleset.ts';
import { inpodNodeRules, inpodPodRules } from './inpod.ts';
import { nodeRules, ztunnelPodRules } from './node.ts';

export { iptablesSave } from './ruleset.ts';

/** Every netns the iptables path touches for this testbed, with its rules. */
export function iptablesPathRules(info: TestbedInfo): NetnsRules[] {
  if (info.topology === 'inpod') {
    return [...info.nodes.map((n) => inpodNodeRules(info, n.name)), ...info.pods.filter((p) => p.mesh).map((p) => inpodPodRules(p.netnsPath))];
  }
  return info.ztunnels.flatMap((z) => [nodeRules(info, z.node), ztunnelPodRules(info, z.node)]);
}

function stateFile(info: TestbedInfo): string {
  return join(info.runDir, 'iptables-path.json');
}

export async function installIptablesPath(tb: Testbed): Promise<void> {
  const rules = iptablesPathRules(tb.info);
  const before: Record<string, string[]> = {};
  try {
    for (const r of rules) {
      // Recorded before installing, so a half-made install is still removed exactly.
      before[r.netnsPath] = await nftTables(r.netnsPath);
      await install(r);
    }
  } finally {
    writeFileSync(stateFile(tb.info), JSON.stringify(before));
  }
}

export async function removeIptablesPath(tb: Testbed): Promise<void> {
  const file = stateFile(tb.info);
  if (!existsSync(file)) return;
  const before = JSON.parse(readFileSync(file, 'utf8')) as Record<string, string[]>;
  for (const r of iptablesPathRules(tb.info).reverse()) {
    const tables = before[r.netnsPath];
    if (tables !== undefined) await remove(r, tables);
  }
  rmSync(file, { force: true });
}
