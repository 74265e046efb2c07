// The arguments deploy/ passes to ambpf are ones the real CLI accepts: every flag is in the command's
// --help, and the commands, run with the manifests' args (env and ConfigMap values substituted the
// way kubelet does), get past argument parsing. Nothing here touches the kernel: `run` stops at
// finding the cluster (no API server here), `uninstall` runs on a pin dir that does not exist.
import t from 'tap';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { mountsOf } from '../../src/doctor/system.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { REPO_ROOT, argOf, containersOf, loadManifests, only, type Container, type Json } from './manifests.ts';

const run = promisify(execFile);
const AMBPF = join(REPO_ROOT, 'bin/ambpf');

const manifests = loadManifests();
const ds = only(manifests, 'DaemonSet');
const job = only(manifests, 'Job');
const cmData = (only(manifests, 'ConfigMap')['data'] ?? {}) as Record<string, string>;
const loader = containersOf(ds).main.find((c) => c.name === 'loader')!;
const uninstall = containersOf(job).main[0]!;
const cniInstall = containersOf(ds).main.find((c) => c.name === 'cni-install')!;

/** The `ambpf cni <verb> ...` command lines of the cni-install script, `\` continuations joined. */
const cniCommands = (cniInstall.command?.at(-1) ?? '')
  .replace(/\\\n\s*/g, ' ')
  .split('\n')
  .map((l) => /^(?:exec )?ambpf (cni \w+.*?)(?: &)?$/.exec(l.trim())?.[1])
  .filter((l): l is string => l !== undefined);

async function help(command: string): Promise<string> {
  const { stdout } = await run(AMBPF, [command, '--help'], { timeout: 30_000 });
  return stdout;
}

/** kubelet's $(VAR) expansion with the container's env: literal values, ConfigMap, downward API. */
function expand(c: Container, args: readonly string[], downward: Record<string, string>): string[] {
  const env: Record<string, string> = {};
  if ((c.envFrom ?? []).some((e) => (e['configMapRef'] as Json | undefined)?.['name'] === 'ambpf-config'))
    Object.assign(env, cmData);
  for (const e of c.env ?? []) {
    const cmKey = ((e.valueFrom?.['configMapKeyRef'] ?? {}) as Json)['key'];
    const field = ((e.valueFrom?.['fieldRef'] ?? {}) as Json)['fieldPath'];
    const value =
      e.value ?? (typeof cmKey === 'string' ? cmData[cmKey] : typeof field === 'string' ? downward[field] : undefined);
    if (value !== undefined) env[e.name] = value;
  }
  return args.map((a) => a.replace(/\$\(([A-Za-z_]\w*)\)/g, (whole, name: string) => env[name] ?? whole));
}

const flagsOf = (args: readonly string[]): string[] =>
  args.filter((a) => a.startsWith('--')).map((a) => a.split('=')[0]!);

t.test('every flag the DaemonSet passes is in `ambpf run --help`', async (t) => {
  const [command, ...rest] = loader.args ?? [];
  t.equal(command, 'run');
  const text = await help('run');
  const flags = flagsOf(rest);
  t.ok(flags.length >= 5, `${flags.length} flags`);
  for (const flag of flags) t.match(text, new RegExp(`^\\s+${flag}\\b`, 'm'), `run --help lists ${flag}`);
});

t.test("the DaemonSet runs run's default mode, inpod, on run's default ZDS socket", async (t) => {
  const text = await help('run');
  t.equal(argOf(loader, '--mode'), 'inpod');
  t.match(
    text,
    /--mode inpod\|node\s+.*inpod \(default\)/,
    "inpod is run's default: the manifest says it anyway, so a change of default cannot move it",
  );
  const sock = argOf(loader, '--zds-socket');
  t.ok(sock, 'the DaemonSet names the socket');
  // The help wraps the default onto the next line.
  t.match(text.replace(/\s+/g, ' '), `(default ${sock};`, `${sock} is run's default (ztunnel's INPOD_UDS)`);
});

t.test('every flag the cni-install script passes is in `ambpf cni --help`', async (t) => {
  t.same(
    cniCommands.map((l) => l.split(' ').slice(0, 2).join(' ')),
    ['cni install', 'cni uninstall'],
    'install (watching), then uninstall',
  );
  const text = await help('cni');
  for (const line of cniCommands) {
    for (const flag of flagsOf(line.split(' ')))
      t.match(text, new RegExp(`^\\s+${flag}\\b`, 'm'), `cni --help lists ${flag}`);
  }
  t.ok(cniCommands[0]?.split(' ').includes('--watch'), 'install keeps watching');
});

t.test('the plugin, the installer and the loader agree on the CNI socket', async (t) => {
  const sock = argOf(loader, '--cni-socket');
  t.ok(sock, 'the loader is given --cni-socket');
  t.match(cniCommands[0] ?? '', `--socket=${sock}`, 'the entry the installer writes names it');
  t.match((await help('cni')).replace(/\s+/g, ' '), `(default ${sock})`, "it is the installer's default");
  const plugin = readFileSync(join(REPO_ROOT, 'cni/ambpf-cni.c'), 'utf8');
  const define = /^#define DEFAULT_SOCKET\s+"([^"]*)"/m.exec(plugin);
  t.equal(define?.[1], sock, "and the plugin's default socketPath");
  t.match(
    argOf(loader, '--cni-timeout-ms') ?? '',
    /^\$\(AMBPF_CNI_TIMEOUT_MS\)$/,
    'the ADD timeout comes from the ConfigMap',
  );
  t.match(cmData['AMBPF_CNI_TIMEOUT_MS'] ?? '', /^\d+$/, 'as a number of ms');
  t.match(argOf(loader, '--cni-grace-ms') ?? '', /^\$\(AMBPF_CNI_GRACE_MS\)$/, 'the CNI grace period too');
  t.match(cmData['AMBPF_CNI_GRACE_MS'] ?? '', /^\d+$/, 'as a number of ms');
});

t.test('every flag the uninstall Job passes is in `ambpf uninstall --help`', async (t) => {
  const [command, ...rest] = uninstall.args ?? [];
  t.equal(command, 'uninstall');
  const text = await help('uninstall');
  for (const flag of flagsOf(rest)) t.match(text, flag, `uninstall --help lists ${flag}`);
});

t.test("`ambpf run` accepts the DaemonSet's args as kubelet expands them", async (t) => {
  // Past argument parsing, run looks for kubelet's kubepods cgroup, then for the in-cluster
  // service account: neither exists here, so it stops there, before any BPF work.
  const kubepods = mountsOf('cgroup2')
    .flatMap((root) => ['kubepods.slice', 'kubepods'].map((d) => join(root, d)))
    .filter((d) => existsSync(d));
  if (kubepods.length)
    return t.plan(
      0,
      `skip: this machine has a kubelet cgroup (${kubepods.join(', ')}); run would go on to load the datapath`,
    );
  const args = expand(loader, loader.args ?? [], { 'spec.nodeName': 'node-a', 'status.hostIP': '198.18.0.10' });
  const sock = args.find((a) => a.startsWith('--zds-socket='))?.slice('--zds-socket='.length) ?? '';
  const sockExisted = existsSync(sock);
  const cniSock = args.find((a) => a.startsWith('--cni-socket='))?.slice('--cni-socket='.length) ?? '';
  const cniSockExisted = existsSync(cniSock);
  t.notOk(
    args.some((a) => a.includes('$(')),
    `every $(VAR) expanded: ${args.join(' ')}`,
  );
  const env: NodeJS.ProcessEnv = { PATH: process.env['PATH'], NODE_NAME: 'node-a', AMBPF_LOG_LEVEL: 'silent' };
  const r = await run(AMBPF, args, { env, timeout: 30_000 }).then(
    () => ({ code: 0, stderr: '' }),
    (err: { code?: number; stderr?: string }) => ({ code: err.code ?? -1, stderr: err.stderr ?? '' }),
  );
  t.not(r.code, 0, 'it cannot run here');
  t.match(
    r.stderr,
    /kubepods|in-cluster|service ?account|KUBERNETES_SERVICE/i,
    `it stopped at the environment, not at an argument: ${r.stderr.trim()}`,
  );
  t.notMatch(
    r.stderr,
    /Unknown option|unexpected argument|is not a port|must be|expects HOST:PORT|not an IP/i,
    'no argument was refused',
  );
  if (!sockExisted) t.notOk(existsSync(sock), `it did not get as far as serving ZDS on this machine's ${sock}`);
  if (!cniSockExisted) t.notOk(existsSync(cniSock), `nor CNI on this machine's ${cniSock}`);
});

t.test("`ambpf uninstall` runs with the Job's args", async (t) => {
  const missing = `/sys/fs/bpf/${testPrefix()}-never-made`;
  const args = expand(uninstall, uninstall.args ?? [], {}).map((a) => a.replace(/^--bpffs=.*/, `--bpffs=${missing}`));
  t.ok(args.includes(`--bpffs=${missing}`), 'the Job passes --bpffs (pointed at an empty place here)');
  const { stdout } = await run(AMBPF, args, { env: { ...process.env, AMBPF_LOG_LEVEL: 'silent' }, timeout: 30_000 });
  t.match(stdout, `nothing of ambpf's under ${missing}`);
  t.notOk(existsSync(missing), 'and it made nothing');
});
