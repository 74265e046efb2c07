import type { Command } from '../command.ts';
import { UsageError } from '../../errors.ts';

export const command: Command = {
  summary: 'check the kernel, mounts, tools, sysctls and pod capacity ambpf needs',
  usage: [
    'Usage: ambpf doctor [-j|--json]',
    '',
    'Probes the kernel version, BTF, the bpffs and cgroup v2 mounts (from /proc/mounts), every BPF',
    'program type, map type and helper ambpf uses (real loads), tcx links (on a throwaway netns) and',
    'clang. Prints a table; exits 0 when everything is present, 1 naming each missing feature and the',
    'Linux version that brings it.',
    '',
    "Then the loader's choices on this kernel, from the same real probes: the minimum supported kernel",
    '(5.10, proven by the kernel matrix in docs/kernels.md), tc attach (tcx link on 6.6+, else a clsact',
    'filter) and sk_msg attach (prog_attach to the pinned sockhash on every kernel; whether sockmap',
    'links, 6.10+, work here is probed and shown).',
    '',
    'Then the node: the sysctls the datapath depends on (net.ipv4.conf.all.rp_filter=0 for the node',
    'topology, net.ipv4.ip_default_ttl=64 for inpod probe detection, the BPF JIT, tcp_migrate_req), each',
    "with the value to set, and whether the node's pod capacity (kubelet's maxPods from its config file,",
    'or --node-max-pods) fits the per-pod maps (their pinned size under --bpffs, else --max-pods or the',
    'default), and (inpod) whether each ztunnel the running loader saw connect runs inside its --cgroup.',
    'These are warnings (WARN): they do not change the exit status.',
    '',
    '  -j, --json            machine-readable report',
    "  --bpffs DIR           the loader's pin directory (default /sys/fs/bpf/ambpf)",
    "  --kubelet-config F    kubelet's config file (default /var/lib/kubelet/config.yaml)",
    "  --node-max-pods N     the node's pod capacity, when the kubelet config is not readable here",
    "  --max-pods N          the loader's --max-pods, for maps not created yet",
    "  --state-file F        the loader's state file (default /run/ambpf/state.json)",
  ].join('\n'),
  async run(argv) {
    const o: {
      json: boolean;
      bpffs: string;
      kubeletConfig?: string;
      nodeMaxPods?: number;
      maxPods?: number;
      stateFile?: string;
    } = {
      json: false,
      bpffs: '/sys/fs/bpf/ambpf',
    };
    const positive = (flag: string, v: string | undefined): number => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new UsageError(`${flag} needs a positive integer, not '${v ?? ''}'`);
      return n;
    };
    for (let i = 0; i < argv.length; i++) {
      const a = argv[i]!;
      const [flag, inline] =
        a.startsWith('--') && a.includes('=')
          ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)]
          : [a, undefined];
      const value = (): string | undefined => inline ?? argv[++i];
      if (flag === '-j' || flag === '--json') o.json = true;
      else if (flag === '--bpffs') o.bpffs = value() ?? o.bpffs;
      else if (flag === '--kubelet-config') o.kubeletConfig = value();
      else if (flag === '--node-max-pods') o.nodeMaxPods = positive(flag, value());
      else if (flag === '--max-pods') o.maxPods = positive(flag, value());
      else if (flag === '--state-file') o.stateFile = value();
      else throw new UsageError(`unknown argument ${a} for ambpf doctor; see ambpf doctor --help`);
    }
    // Loaded here so `ambpf --help` never pays for koffi.
    const { runDoctor, renderReport } = await import('../../doctor/report.ts');
    const report = runDoctor({
      bpffs: o.bpffs,
      kubeletConfig: o.kubeletConfig,
      nodeMaxPods: o.nodeMaxPods,
      maxPods: o.maxPods,
      stateFile: o.stateFile,
    });
    process.stdout.write(o.json ? JSON.stringify(report, null, 2) + '\n' : renderReport(report));
    return report.ok ? 0 : 1;
  },
};
