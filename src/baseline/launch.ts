// Runs the baseline agent (src/baseline/agent.ts) on testbed nodes the way istio-cni's DaemonSet runs
// its node agent: one process per node, in the node's netns (where the probe SNAT goes), outside
// kubepods. Each agent writes its state to a JSON file the handle reads.
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Testbed } from '../testbed/testbed.ts';
import type { TestbedNode } from '../testbed/types.ts';
import type { TestbedProcess } from '../testbed/exec.ts';
import { TestbedTimeoutError } from '../testbed/errors.ts';
import type { BaselineAgentState } from './agent.ts';
import type { Backend } from './istio-rules.ts';

const AGENT = fileURLToPath(new URL('./agent.ts', import.meta.url));

export interface BaselineAgentHandle {
  readonly node: TestbedNode;
  readonly process: TestbedProcess;
  readonly stateFile: string;
  readonly logFile: string;
  /** The last state the agent wrote (undefined before its first). */
  state(): BaselineAgentState | undefined;
  /** Resolves with the state once `pred` holds; rejects on timeout or when the agent exited first. */
  waitFor(pred: (s: BaselineAgentState) => boolean, what: string, timeoutMs?: number): Promise<BaselineAgentState>;
  /** SIGTERM (the agent removes its rules unless started with keepRules) and the exit code. */
  stop(): Promise<number | null>;
}

export interface BaselineAgentsOptions {
  readonly backend: Backend;
  readonly podsFile: string;
  /** The node's ZDS socket (ztunnel's INPOD_UDS); undefined = no ZDS. */
  readonly zdsSocket: (node: string) => string | undefined;
  /** Default: every node. */
  readonly nodes?: readonly TestbedNode[];
  readonly logDir?: string;
  /** Keep the rules on SIGTERM (an agent upgrade). */
  readonly keepRules?: boolean;
  /** Extra agent flags (--no-dns-capture, --no-ipv6, --kubelet-uid N). */
  readonly extraArgs?: readonly string[];
}

function readState(path: string): BaselineAgentState | undefined {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as BaselineAgentState;
  } catch {
    return undefined;
  }
}

function tail(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim().split('\n').slice(-8).join('\n');
  } catch {
    return '';
  }
}

export function startBaselineAgent(tb: Testbed, node: TestbedNode, o: BaselineAgentsOptions): BaselineAgentHandle {
  const dir = o.logDir ?? tb.info.runDir;
  const stateFile = join(dir, `baseline-agent-${node.name}.json`);
  const logFile = join(dir, `baseline-agent-${node.name}.log`);
  rmSync(stateFile, { force: true });
  const zds = o.zdsSocket(node.name);
  const argv = [
    process.execPath,
    AGENT,
    '--node',
    node.name,
    '--pods-file',
    o.podsFile,
    '--rules',
    o.backend,
    '--zds-socket',
    zds ?? 'none',
    '--state-file',
    stateFile,
    ...(o.keepRules ? ['--keep-rules'] : []),
    ...(o.extraArgs ?? []),
  ];
  const proc = tb.spawn(node, argv, { logFile, env: { ...process.env, AMBPF_LOG_FORMAT: 'json' } });
  let exited: number | null | undefined;
  void proc.exited.then((code) => (exited = code));
  return {
    node,
    process: proc,
    stateFile,
    logFile,
    state: () => readState(stateFile),
    async waitFor(pred, what, timeoutMs = 20_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const s = readState(stateFile);
        if (s && pred(s)) return s;
        if (exited !== undefined)
          throw new TestbedTimeoutError(
            `baseline agent on ${node.name}: ${what} (it exited with ${exited}):\n${tail(logFile)}`,
            0,
          );
        if (Date.now() > deadline)
          throw new TestbedTimeoutError(
            `baseline agent on ${node.name}: ${what}; last state ${JSON.stringify(s)}:\n${tail(logFile)}`,
            timeoutMs,
          );
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async stop() {
      if (exited !== undefined) return exited;
      proc.kill('SIGTERM');
      // Removal is a few dozen short commands: bounded, then forced.
      const timer = setTimeout(() => proc.kill('SIGKILL'), 20_000);
      const code = await proc.exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/** One agent per node (or per `o.nodes`); each has installed its node's probe SNAT once this resolves. */
export async function startBaselineAgents(tb: Testbed, o: BaselineAgentsOptions): Promise<BaselineAgentHandle[]> {
  const handles = (o.nodes ?? tb.nodes).map((n) => startBaselineAgent(tb, n, o));
  try {
    await Promise.all(handles.map((h) => h.waitFor(() => true, 'started')));
  } catch (err) {
    // The others would keep their rules: stop them (each removes what it installed).
    await Promise.all(handles.map((h) => h.stop()));
    throw err;
  }
  return handles;
}
