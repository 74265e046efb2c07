// Every command ambpf knows, with the module that implements it. A module that does not exist yet
// makes `ambpf <name>` say so plainly instead of crashing.
export interface CommandEntry {
  readonly name: string;
  readonly summary: string;
  /** Path relative to src/cli/, loaded with dynamic import. */
  readonly module: string;
}

export const COMMANDS: readonly CommandEntry[] = [
  {
    name: 'run',
    summary: 'load, pin and attach the datapath, then keep the maps in sync with pods',
    module: './commands/run.ts',
  },
  {
    name: 'status',
    summary: 'programs, links, map fill and counters of the running datapath',
    module: './commands/status.ts',
  },
  { name: 'pods', summary: 'the ambient-pod map decoded, with pod names', module: './commands/pods.ts' },
  {
    name: 'map',
    summary: 'bpftool-compatible map inspection (show|list|dump|lookup|getnext)',
    module: './commands/map.ts',
  },
  { name: 'prog', summary: 'bpftool-compatible program inspection (show|list)', module: './commands/prog.ts' },
  {
    name: 'uninstall',
    summary: 'detach and unpin everything ambpf made under --bpffs, nothing else',
    module: './commands/uninstall.ts',
  },
  {
    name: 'cni',
    summary: "put ambpf-cni into the node's CNI chain (install) or take it out (uninstall)",
    module: './commands/cni.ts',
  },
  { name: 'doctor', summary: 'check the kernel, mounts and tools ambpf needs', module: './commands/doctor.ts' },
  {
    name: 'build',
    summary: 'compile the BPF objects into the cache (what `make bpf` runs)',
    module: './commands/build.ts',
  },
  { name: 'testbed', summary: 'bring the local netns cluster up or down by hand', module: './commands/testbed.ts' },
  { name: 'demo', summary: 'the local two-node demo on the eBPF path', module: './commands/demo.ts' },
  { name: 'bench', summary: 'benchmark eBPF vs iptables vs direct on the testbed', module: './commands/bench.ts' },
];
