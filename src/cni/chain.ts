// A CNI chain run the way a container runtime runs it (CNI spec 1.0.0, "Execution"): each plugin
// exec'd with the CNI_* environment and its config on stdin, the previous plugin's result handed on
// as prevResult, DEL in reverse order. The primary CNI is Debian's containernetworking-plugins
// (loopback, then bridge + host-local, as containerd runs them), ambpf-cni last. Used by the tests
// (test/cni/) and `ambpf demo`, which create pod sandboxes through it.
import { spawn } from 'node:child_process';
import { join } from 'node:path';

/** Where Debian's containernetworking-plugins puts the plugins (the Makefile's APT_PACKAGES). */
export const DEBIAN_CNI_BIN = '/usr/lib/cni';

export interface PluginRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  /** Exec to exit, ms. */
  readonly ms: number;
  /** Date.now() at exec and at exit: a timeline across processes. */
  readonly startedAt: number;
  readonly endedAt: number;
}

/** Runs one plugin as a runtime does: env + stdin; stdout, stderr and exit code back. */
export function runPlugin(
  argv: readonly string[],
  env: Readonly<Record<string, string>>,
  stdin: string,
): Promise<PluginRun> {
  const started = performance.now();
  const startedAt = Date.now();
  return new Promise((resolve, reject) => {
    const p = spawn(argv[0]!, argv.slice(1), { env: { PATH: process.env['PATH'] ?? '', ...env }, stdio: 'pipe' });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    p.on('error', reject);
    // A plugin may exit before reading all of stdin (a config over its bound): not an error here.
    p.stdin.on('error', () => undefined);
    p.on('close', (code) =>
      resolve({ code, stdout, stderr, ms: performance.now() - started, startedAt, endedAt: Date.now() }),
    );
    p.stdin.end(stdin);
  });
}

export interface ChainOptions {
  /** The ambpf-cni binary (build/cni/ambpf-cni). */
  readonly plugin: string;
  /** The agent's --cni-socket. */
  readonly socketPath: string;
  /** The node's netns (the primary CNI runs there: the bridge and the host side of the veth). */
  readonly nodeNetnsPath: string;
  readonly bridge: string;
  /** host-local's range, e.g. 198.19.200.0/24, and where it keeps its leases. */
  readonly subnet: string;
  readonly ipamDir: string;
  readonly cniBin?: string;
}

/** One sandbox as the runtime describes it to the chain. */
export interface ChainSandbox {
  readonly containerId: string;
  readonly netnsPath: string;
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
}

export interface ChainAdd {
  readonly loopback: PluginRun;
  readonly bridge: PluginRun;
  /** Undefined when the bridge failed (the chain stops there). */
  readonly ours: PluginRun | undefined;
  /** The bridge's result (what ambpf-cni must hand on unchanged). */
  readonly prevResult: Record<string, unknown> | undefined;
  /** The pod's IPv4 from the bridge's result. */
  readonly ip: string | undefined;
}

const NET = { cniVersion: '1.0.0', name: 'ambpf-chain' } as const;

export class CniChain {
  readonly #o: ChainOptions;
  readonly #bin: string;

  constructor(o: ChainOptions) {
    this.#o = o;
    this.#bin = o.cniBin ?? DEBIAN_CNI_BIN;
  }

  env(command: string, s: ChainSandbox, ifname = 'eth0'): Record<string, string> {
    return {
      CNI_COMMAND: command,
      CNI_CONTAINERID: s.containerId,
      CNI_NETNS: s.netnsPath,
      CNI_IFNAME: ifname,
      CNI_PATH: this.#bin,
      CNI_ARGS:
        `IgnoreUnknown=1;K8S_POD_NAMESPACE=${s.namespace};K8S_POD_NAME=${s.name};` +
        `K8S_POD_INFRA_CONTAINER_ID=${s.containerId};K8S_POD_UID=${s.uid}`,
    };
  }

  bridgeConf(): Record<string, unknown> {
    return {
      ...NET,
      type: 'bridge',
      bridge: this.#o.bridge,
      isGateway: true,
      ipMasq: false,
      ipam: {
        type: 'host-local',
        ranges: [[{ subnet: this.#o.subnet }]],
        routes: [{ dst: '0.0.0.0/0' }],
        dataDir: this.#o.ipamDir,
      },
    };
  }

  oursConf(extra: Record<string, unknown> = {}): Record<string, unknown> {
    return { ...NET, type: 'ambpf-cni', socketPath: this.#o.socketPath, ...extra };
  }

  #bridgeArgv(): string[] {
    return ['nsenter', `--net=${this.#o.nodeNetnsPath}`, '--', join(this.#bin, 'bridge')];
  }

  /** ADD as containerd runs it: loopback (go-cni's WithLoNetwork), bridge + host-local, ambpf-cni. */
  async add(s: ChainSandbox): Promise<ChainAdd> {
    const loConf = JSON.stringify({ cniVersion: '1.0.0', name: 'cni-loopback', type: 'loopback' });
    const loopback = await runPlugin([join(this.#bin, 'loopback')], this.env('ADD', s, 'lo'), loConf);
    const bridge = await runPlugin(this.#bridgeArgv(), this.env('ADD', s), JSON.stringify(this.bridgeConf()));
    if (bridge.code !== 0) return { loopback, bridge, ours: undefined, prevResult: undefined, ip: undefined };
    const prevResult = JSON.parse(bridge.stdout) as Record<string, unknown>;
    const conf = JSON.stringify({ ...this.oursConf(), prevResult });
    const ours = await runPlugin([this.#o.plugin], this.env('ADD', s), conf);
    const ips = prevResult['ips'] as Array<{ address: string }> | undefined;
    return { loopback, bridge, ours, prevResult, ip: ips?.[0]?.address.split('/')[0] };
  }

  /** DEL down the chain in reverse, as the runtime does; the exit codes of ambpf-cni and the bridge. */
  async del(s: ChainSandbox): Promise<{ ours: PluginRun; bridge: PluginRun }> {
    const ours = await runPlugin([this.#o.plugin], this.env('DEL', s), JSON.stringify(this.oursConf()));
    const bridge = await runPlugin(this.#bridgeArgv(), this.env('DEL', s), JSON.stringify(this.bridgeConf()));
    return { ours, bridge };
  }
}
