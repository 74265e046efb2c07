// Drives main.ts in a child process over IPC: the same knobs as FakeApiServer, for a
// server that must live in another network namespace than the test (prefix the command with
// `nsenter --net=/run/netns/NAME`; the IPC pipe crosses namespaces).
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { KubeObject } from './store.ts';
import type { RequestRecord } from './server.ts';

const MAIN = fileURLToPath(new URL('./main.ts', import.meta.url));
const NODE = fileURLToPath(new URL('../../../node_modules/node/bin/node', import.meta.url));

export interface FakeApiServerProcessOptions {
  /** Command prefix, e.g. ['nsenter', '--net=/run/netns/abcd-node1']. */
  readonly prefix?: readonly string[];
  readonly kubeconfigOut: string;
  readonly seedFile?: string;
  readonly bookmarkMs?: number;
  readonly startTimeoutMs?: number;
}

interface Reply {
  readonly id: number;
  readonly ok: boolean;
  readonly result?: unknown;
  readonly error?: string;
}

export class FakeApiServerProcess {
  readonly url: string;
  private readonly child: ChildProcess;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  private constructor(child: ChildProcess, url: string) {
    this.child = child;
    this.url = url;
    child.on('message', (msg: Reply) => {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.ok) p.resolve(msg.result);
      else p.reject(new Error(`fake API server: ${msg.error ?? 'failed'}`));
    });
    child.on('exit', () => {
      for (const p of this.pending.values()) p.reject(new Error('fake API server process exited'));
      this.pending.clear();
    });
  }

  static async start(options: FakeApiServerProcessOptions): Promise<FakeApiServerProcess> {
    const args = [MAIN, '--kubeconfig-out', options.kubeconfigOut, '--bookmark-ms', String(options.bookmarkMs ?? 0)];
    if (options.seedFile) args.push('--seed', options.seedFile);
    const argv = [...(options.prefix ?? []), NODE, ...args];
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
    let stderr = '';
    child.stderr?.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`fake API server did not start within ${options.startTimeoutMs ?? 10_000} ms: ${stderr}`));
      }, options.startTimeoutMs ?? 10_000);
      let out = '';
      child.stdout?.on('data', (c: Buffer) => {
        out += c.toString();
        const m = /^ready (\S+)$/m.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]!);
        }
      });
      child.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`fake API server exited (${String(code)}) before it was ready: ${stderr}`));
      });
    });
    return new FakeApiServerProcess(child, url);
  }

  private call<T>(op: string, ...args: unknown[]): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.child.send({ id, op, args });
    });
  }

  addPod(pod: Record<string, unknown>): Promise<KubeObject> {
    return this.call('addPod', pod);
  }
  updatePod(pod: Record<string, unknown>): Promise<KubeObject> {
    return this.call('updatePod', pod);
  }
  deletePod(namespace: string, name: string): Promise<KubeObject> {
    return this.call('deletePod', namespace, name);
  }
  async getPod(namespace: string, name: string): Promise<KubeObject | undefined> {
    return (await this.call<KubeObject | null>('getPod', namespace, name)) ?? undefined;
  }
  addNamespace(ns: Record<string, unknown>): Promise<KubeObject> {
    return this.call('addNamespace', ns);
  }
  updateNamespace(ns: Record<string, unknown>): Promise<KubeObject> {
    return this.call('updateNamespace', ns);
  }
  deleteNamespace(name: string): Promise<KubeObject> {
    return this.call('deleteNamespace', name);
  }
  dropWatches(options: { graceful?: boolean } = {}): Promise<void> {
    return this.call('dropWatches', options);
  }
  stall(options: { headers?: boolean } = {}): Promise<void> {
    return this.call('stall', options);
  }
  unstall(): Promise<void> {
    return this.call('unstall');
  }
  compact(): Promise<void> {
    return this.call('compact');
  }
  expireWatches(): Promise<void> {
    return this.call('expireWatches');
  }
  failNext(count: number, code = 500): Promise<void> {
    return this.call('failNext', count, code);
  }
  sendBookmarks(): Promise<void> {
    return this.call('sendBookmarks');
  }
  setToken(token: string): Promise<void> {
    return this.call('setToken', token);
  }
  down(): Promise<void> {
    return this.call('down');
  }
  up(): Promise<void> {
    return this.call('up');
  }
  requests(): Promise<RequestRecord[]> {
    return this.call('requests');
  }
  openWatches(): Promise<number> {
    return this.call('openWatches');
  }

  /** Stops the server process (SIGTERM, then SIGKILL after 3 s). */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  }
}
