// The whole suite must leave the machine as it found it (issue 3): `make test` snapshots what tests
// could leak before tap runs and compares after it. Each test file checks its own objects by prefix
// (test/testbed/leak-check.ts); this is the net under all of them, including a test that forgot to.
//
//   node scripts/leftovers.ts snapshot FILE   write the snapshot
//   node scripts/leftovers.ts check FILE      compare with FILE; exit 1 listing what is new
//
// What counts: network namespaces, interfaces of the root netns, cgroup v2 directories (systemd's
// own units excluded: they come and go with the machine's services), everything under /sys/fs/bpf,
// BPF programs and links (systemd's sd_* programs excluded), the root netns' iptables rules and
// ipsets. Only additions are reported: something of the machine's that went away is not ours.
// It assumes nothing else on the machine creates such objects while the suite runs (true in CI,
// which runs on a fresh machine); on a shared machine another run's objects would be reported.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { cgroup2Root } from '../src/testbed/cgroup.ts';
import { listTree } from '../src/testbed/cleanup.ts';

type Snapshot = Record<string, string[]>;

function cmd(argv: string[]): string {
  try {
    return execFileSync(argv[0]!, argv.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return '';
  }
}

const SYSTEMD_UNIT = /\.(scope|service|slice|mount|socket|swap)$/;

function bpftoolJson(kind: 'prog' | 'link'): Array<{ id: number; name?: string; type?: string; prog_id?: number }> {
  // Not cmd(): without bpftool this check would pass having looked at nothing.
  const text = execFileSync('bpftool', [kind, 'show', '-j'], { encoding: 'utf8' });
  return text.trim() ? (JSON.parse(text) as Array<{ id: number; name?: string; type?: string; prog_id?: number }>) : [];
}

/** BPF programs and links, minus systemd's own (sd_* programs and the links that hold them). */
function bpfObjects(): { progs: string[]; links: string[] } {
  const progs = bpftoolJson('prog');
  const systemd = new Set(progs.filter((p) => p.name?.startsWith('sd_')).map((p) => p.id));
  return {
    progs: progs.filter((p) => !systemd.has(p.id)).map((p) => `prog ${p.id} ${p.type ?? ''} ${p.name ?? ''}`.trim()),
    links: bpftoolJson('link')
      .filter((l) => l.prog_id === undefined || !systemd.has(l.prog_id))
      .map((l) => `link ${l.id} ${l.type ?? ''} prog ${l.prog_id ?? '?'}`),
  };
}

function take(): Snapshot {
  return {
    netns: cmd(['ip', 'netns', 'list'])
      .split('\n')
      .map((l) => l.split(' ')[0] ?? '')
      .filter(Boolean),
    interfaces: cmd(['ip', '-o', 'link', 'show'])
      .split('\n')
      .map((l) => l.split(': ')[1]?.split('@')[0] ?? '')
      .filter(Boolean),
    cgroups: listTree(cgroup2Root(), 6, { keep: (n) => !SYSTEMD_UNIT.test(n), dirsOnly: true }),
    bpffs: listTree('/sys/fs/bpf', 8),
    ...bpfObjects(),
    // Rules only: an empty table header can appear or vanish with the iptables variant in use.
    iptables: cmd(['iptables-save'])
      .split('\n')
      .filter((l) => l.startsWith('-A ')),
    ipsets: cmd(['ipset', 'list', '-n']).split('\n').filter(Boolean),
  };
}

function added(before: Snapshot, after: Snapshot): string[] {
  const out: string[] = [];
  for (const [kind, items] of Object.entries(after)) {
    const had = new Set(before[kind] ?? []);
    for (const item of items) if (!had.has(item)) out.push(`${kind}: ${item}`);
  }
  return out;
}

function main(argv: string[]): number {
  const [verb, file] = argv;
  if ((verb !== 'snapshot' && verb !== 'check') || !file) {
    process.stderr.write('usage: leftovers.ts snapshot|check FILE\n');
    return 2;
  }
  if (verb === 'snapshot') {
    writeFileSync(file, JSON.stringify(take(), null, 1));
    return 0;
  }
  const before = JSON.parse(readFileSync(file, 'utf8')) as Snapshot;
  // Programs attached to a cgroup that was just removed are freed when the kernel releases the
  // cgroup, and a netns goes when its last socket does: look again for up to 30 s before calling
  // anything a leftover.
  let left = added(before, take());
  for (let i = 0; i < 30 && left.length > 0; i++) {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1000);
    left = added(before, take());
  }
  if (left.length > 0) {
    process.stderr.write(
      `the test suite left ${left.length} thing(s) behind:\n${left.map((a) => `  ${a}`).join('\n')}\n`,
    );
    return 1;
  }
  process.stdout.write(
    'leftovers: none (netns, interfaces, cgroups, bpffs, BPF programs and links, iptables, ipsets as before)\n',
  );
  return 0;
}

process.exitCode = main(process.argv.slice(2));
