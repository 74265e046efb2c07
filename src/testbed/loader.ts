// Runs `ambpf run` on the nodes of a testbed, the way a DaemonSet would: one loader per node, in the
// node's netns (outside kubepods), with the node's own bpffs dir and kubepods cgroup.
import { readFileSync, writeFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Testbed } from './testbed.ts';
import type { TestbedNode } from './types.ts';
import type { TestbedProcess } from './exec.ts';

export const AMBPF_BIN = fileURLToPath(new URL('../../bin/ambpf', import.meta.url));
export const LOADER_PORT = 15099;

export interface Loader {
  readonly node: TestbedNode;
  readonly logFile: string;
  readonly stateFile: string;
  proc: TestbedProcess;
  /** Starts the loader again with the same arguments (after a kill). */
  restart(): TestbedProcess;
  /** Log lines (JSON) written so far. */
  logLines(): Array<Record<string, unknown>>;
}

/** Where the loader reads pods from: a pods file path, or a kubeconfig (the fake API server's). */
export type LoaderSource = string | { readonly kubeconfig: string };

/** The ZDS socket a node's loader serves and its ztunnel connects to (ztunnel's INPOD_UDS). */
export function zdsSocketPath(tb: Testbed, node: TestbedNode): string {
  return join(tb.info.runDir, `zds-${node.name}.sock`);
}

/** The state file `ambpf run` on this node writes (loaderArgs), beside the testbed's other files. */
export function stateFilePath(tb: Testbed, node: TestbedNode): string {
  return join(tb.info.runDir, `state-${node.name}.json`);
}

/**
 * `ambpf run` for a node, in the testbed's topology. `zds`: inpod only, whether the loader serves ZDS
 * on zdsSocketPath (the per-node ztunnel stand-in connects there) or not (`none`: the per-pod
 * stand-ins open their listeners by themselves).
 */
export function loaderArgs(
  tb: Testbed,
  node: TestbedNode,
  source: LoaderSource,
  extra: readonly string[] = [],
  zds = false,
): string[] {
  const from = typeof source === 'string' ? ['--pods-file', source] : ['--kubeconfig', source.kubeconfig];
  const mode =
    tb.info.topology === 'inpod'
      ? // --node-ip as the DaemonSet passes the host IPs (both families): kubelet-like probes from them
        // reach the app directly.
        [
          '--mode',
          'inpod',
          '--zds-socket',
          zds ? zdsSocketPath(tb, node) : 'none',
          '--node-ip',
          `${node.wireIp},${node.wireIp6}`,
        ]
      : ['--mode', 'node'];
  return [
    AMBPF_BIN,
    'run',
    '--node',
    node.name,
    ...from,
    '--bpffs',
    node.bpffsDir,
    '--cgroup',
    node.kubepodsCgroup,
    '--listen',
    `127.0.0.1:${LOADER_PORT}`,
    '--state-file',
    stateFilePath(tb, node),
    '--resync-ms',
    '300',
    ...mode,
    ...extra,
  ];
}

export function startLoader(
  tb: Testbed,
  node: TestbedNode,
  source: LoaderSource,
  extra: readonly string[] = [],
  zds = false,
  envOver: NodeJS.ProcessEnv = {},
): Loader {
  const logFile = join(tb.info.runDir, `loader-${node.name}.log`);
  const env = { ...process.env, AMBPF_LOG_FORMAT: 'json', AMBPF_LOG_LEVEL: 'debug', ...envOver };
  const start = (): TestbedProcess => tb.spawn(node.name, loaderArgs(tb, node, source, extra, zds), { logFile, env });
  const loader: Loader = {
    node,
    logFile,
    stateFile: stateFilePath(tb, node),
    proc: start(),
    restart() {
      loader.proc = start();
      return loader.proc;
    },
    logLines() {
      return readFileSync(logFile, 'utf8')
        .split('\n')
        .filter(Boolean)
        .flatMap((l) => {
          try {
            return [JSON.parse(l) as Record<string, unknown>];
          } catch {
            return [];
          }
        });
    },
  };
  return loader;
}

/**
 * Polls the loader's /readyz from inside the node's netns. The deadline only bounds a failure: a loader
 * is ready in ~1 s on an idle machine, but a cold start (Node type-stripping the sources, koffi, libbpf
 * loading and verifying every program) took over 20 s with both cores busy.
 */
export async function waitReady(tb: Testbed, loader: Loader, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await tb.exec(
      loader.node.name,
      ['curl', '-sf', '--max-time', '1', `http://127.0.0.1:${LOADER_PORT}/readyz`],
      { check: false, timeoutMs: 3000 },
    );
    if (r.code === 0) return;
    if (Date.now() > deadline) {
      throw new Error(
        `loader on ${loader.node.name} not ready after ${timeoutMs} ms; log:\n${readFileSync(loader.logFile, 'utf8').slice(-3000)}`,
      );
    }
    await new Promise((res) => setTimeout(res, 100));
  }
}

export async function metrics(tb: Testbed, loader: Loader): Promise<string> {
  const r = await tb.exec(
    loader.node.name,
    ['curl', '-sf', '--max-time', '2', `http://127.0.0.1:${LOADER_PORT}/metrics`],
    { timeoutMs: 4000 },
  );
  return r.stdout;
}

type Json = Record<string, unknown>;
interface ListFile {
  items: Array<
    {
      kind: string;
      metadata: Json & {
        name: string;
        namespace?: string;
        labels?: Record<string, string>;
        annotations?: Record<string, string>;
      };
    } & Json
  >;
}

/** Edits the pods List in place, atomically (write + rename), as a GitOps tool or kubectl would. */
export function editPodsFile(path: string, edit: (list: ListFile) => void): void {
  const list = JSON.parse(readFileSync(path, 'utf8')) as ListFile;
  edit(list);
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, JSON.stringify(list, null, 2));
  renameSync(tmp, path);
}
