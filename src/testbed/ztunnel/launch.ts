// Starts the ztunnel stand-in where each topology puts ztunnel: node topology = one process in the
// ztunnel pod (its netns and cgroup, transparent listeners); inpod = one process per mesh pod, in that
// pod's netns but ztunnel's cgroup (as real ztunnel opens its listeners in pod netns it was handed).
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Testbed } from '../testbed.ts';
import type { TestbedProcess } from '../exec.ts';
import { TestbedTimeoutError } from '../errors.ts';
import { makePki, pkiPaths } from './pki.ts';
import type { StandInConfig } from './config.ts';

const STANDIN = fileURLToPath(new URL('./standin.ts', import.meta.url));
const running = new WeakMap<Testbed, TestbedProcess[]>();

async function waitReady(file: string, proc: TestbedProcess, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  void proc.exited.then(() => (exited = true));
  while (!existsSync(file)) {
    if (exited) throw new TestbedTimeoutError(`${what} (it exited; see its .out file in the run dir)`, 0);
    if (Date.now() > deadline) throw new TestbedTimeoutError(what, timeoutMs);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export async function startStandIns(tb: Testbed): Promise<void> {
  const { info } = tb;
  if (!existsSync(pkiPaths(info.pkiDir).cert)) await makePki(info.pkiDir);
  const dir = join(info.runDir, 'standin');
  mkdirSync(dir, { recursive: true });
  const meshIps = info.pods.filter((p) => p.mesh).map((p) => p.ip);
  const procs: { proc: TestbedProcess; ready: string; where: string }[] = [];
  for (const z of info.ztunnels) {
    const zpod = tb.pod(`istio-system/${z.pod}`);
    const targets = info.topology === 'node' ? [zpod] : info.pods.filter((p) => p.mesh && p.node === z.node);
    for (const target of targets) {
      const where = info.topology === 'node' ? z.pod : `${target.namespace}/${target.name}`;
      const id = where.replace('/', '.');
      const ready = join(dir, `${id}.ready`);
      rmSync(ready, { force: true });
      const cfg: StandInConfig = {
        node: z.node,
        where,
        logPath: z.logPath,
        pkiDir: info.pkiDir,
        transparent: info.topology === 'node',
        meshIps,
        localMeshIps: info.topology === 'node' ? info.pods.filter((p) => p.mesh && p.node === z.node).map((p) => p.ip) : [],
        readyFile: ready,
      };
      const argv = [process.execPath, STANDIN, JSON.stringify(cfg)];
      const proc = tb.spawnAt(target.netnsPath, zpod.containerCgroupPath, argv, { logFile: join(dir, `${id}.out`) });
      procs.push({ proc, ready, where });
    }
  }
  await Promise.all(procs.map((p) => waitReady(p.ready, p.proc, `the ztunnel stand-in for ${p.where}`)));
  running.set(tb, [...(running.get(tb) ?? []), ...procs.map((p) => p.proc)]);
}

/** Stops the stand-ins this process started (down() kills them anyway). */
export async function stopStandIns(tb: Testbed): Promise<void> {
  const procs = running.get(tb) ?? [];
  running.delete(tb);
  for (const p of procs) p.kill('SIGTERM');
  await Promise.all(procs.map((p) => p.exited));
}
