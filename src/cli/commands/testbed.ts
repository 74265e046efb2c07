// `ambpf testbed up|down|list`: the local netns cluster by hand. `up` prints the handle as JSON and
// leaves the cluster running (its processes detached); `down` removes one by prefix, or every
// leftover of the `ambtb` family with --all.
import type { Command } from '../command.ts';
import { UsageError } from '../../errors.ts';

const USAGE = [
  'Usage: ambpf testbed up [--topology node|inpod] [--spec FILE] [--prefix P] [--no-standin] [--iptables] [--pods-list FILE]',
  '       ambpf testbed down <prefix>... | --all',
  '       ambpf testbed list',
  '',
  'up     builds the cluster (default: two nodes, each with a ztunnel pod, two mesh pods and one',
  '       non-mesh pod) in network namespaces, starts the ztunnel stand-in, prints the handle as JSON',
  '       and leaves everything running.',
  '         --topology node|inpod  where ztunnel listens (default node)',
  '         --spec FILE            YAML/JSON {nodes: [{name, ztunnel}], namespaces: [{name, labels}],',
  '                                pods: [{name, namespace, node, labels, annotations, hostNetwork}]}',
  '         --prefix P             name prefix ("ambtb" is prepended unless present)',
  '         --no-standin           do not start the ztunnel stand-in',
  "         --iptables             install Istio's iptables redirection for the topology",
  '         --pods-list FILE       also write the Kubernetes List of Pods and Namespaces there',
  'down   removes a testbed by prefix (processes, netns, cgroups, bpffs dirs, run dir);',
  '       --all removes every testbed of the "ambtb" family on this machine (e.g. after a crash),',
  '       except those whose owning process (a test still running) is alive.',
  'list   prints the prefixes of testbeds present on this machine.',
].join('\n');

async function up(args: string[]): Promise<number> {
  let topology: 'node' | 'inpod' = 'node';
  let specFile: string | undefined;
  let prefix: string | undefined;
  let standIn = true;
  let iptables = false;
  let podsList: string | undefined;
  while (args.length) {
    const a = args.shift() as string;
    const value = (): string => {
      const v = args.shift();
      if (v === undefined) throw new UsageError(`ambpf testbed up ${a} needs a value`);
      return v;
    };
    if (a === '--topology') {
      const v = value();
      if (v !== 'node' && v !== 'inpod') throw new UsageError(`--topology must be node or inpod, not ${v}`);
      topology = v;
    } else if (a === '--spec') specFile = value();
    else if (a === '--prefix') prefix = value();
    else if (a === '--no-standin') standIn = false;
    else if (a === '--iptables') iptables = true;
    else if (a === '--pods-list') podsList = value();
    else throw new UsageError(`unknown argument ${a} for ambpf testbed up; see ambpf testbed --help`);
  }
  const { startTestbed, defaultSpec } = await import('../../testbed/index.ts');
  const { readSpecFile } = await import('../../testbed/spec-file.ts');
  const spec = specFile ? readSpecFile(specFile) : defaultSpec();
  if (prefix !== undefined && !/^[a-z0-9]{1,16}$/.test(prefix))
    throw new UsageError(`--prefix must be 1-16 lowercase letters or digits, not "${prefix}"`);
  const tb = await startTestbed(spec, { topology, standIn, detached: true, ...(prefix ? { prefix } : {}) });
  try {
    if (iptables) {
      const { installIptablesPath } = await import('../../baseline/index.ts');
      await installIptablesPath(tb);
    }
    if (podsList) tb.writePodsList(podsList);
  } catch (e) {
    await tb.down();
    throw e;
  }
  process.stdout.write(JSON.stringify(tb.info, null, 2) + '\n');
  return 0;
}

async function down(args: string[]): Promise<number> {
  const { removeByPrefix, findPrefixes, effectivePrefix, liveOwner } = await import('../../testbed/index.ts');
  let prefixes: string[];
  if (args.includes('--all')) {
    if (args.length > 1) throw new UsageError('ambpf testbed down --all takes no prefixes');
    prefixes = findPrefixes().filter((p) => {
      const owner = liveOwner(p);
      if (owner !== undefined) process.stdout.write(`skipped ${p}: it belongs to running process ${owner}\n`);
      return owner === undefined;
    });
  } else {
    if (args.length === 0) throw new UsageError('ambpf testbed down needs a prefix (see ambpf testbed list) or --all');
    prefixes = args.map((p) => {
      if (!/^[a-z0-9]{1,16}$/.test(p)) throw new UsageError(`"${p}" is not a testbed prefix`);
      return effectivePrefix(p);
    });
  }
  for (const p of prefixes) {
    await removeByPrefix(p);
    process.stdout.write(`removed ${p}\n`);
  }
  if (prefixes.length === 0) process.stdout.write('no testbeds found\n');
  return 0;
}

export const command: Command = {
  summary: 'bring the local netns cluster up or down by hand',
  usage: USAGE,
  async run(argv) {
    const [sub, ...rest] = argv;
    if (sub === 'up') return up(rest);
    if (sub === 'down') return down(rest);
    if (sub === 'list') {
      const { findPrefixes } = await import('../../testbed/index.ts');
      for (const p of findPrefixes()) process.stdout.write(`${p}\n`);
      return 0;
    }
    throw new UsageError(`ambpf testbed needs up, down or list${sub ? `, not ${sub}` : ''}; see ambpf testbed --help`);
  },
};
