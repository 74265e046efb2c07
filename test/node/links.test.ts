import t from 'tap';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readHostRoutes } from '../../src/node/links.ts';
import { ifIndex } from '../../src/libbpf/index.ts';

// A fake /proc/net with the kernel's two route formats (IPv4 little-endian hex, IPv6 32 hex digits
// in network order) on an interface this netns has (only read: its ifindex).
t.test('host routes of both families, by interface, in canonical text', async (t) => {
  const ifname = readdirSync('/sys/class/net').find((n) => n !== 'lo');
  if (!ifname) return t.plan(0, 'skip: this netns has no interface but lo');
  const dir = await mkdtemp(join(tmpdir(), 'ambpf-procnet-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const v4 = [
    'Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT',
    `${ifname}\t070012C6\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0`, // 198.18.0.7/32
    `${ifname}\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0`, // a /24: not a pod route
    'lo\t0100007F\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0',
  ];
  const zero = '0'.repeat(32);
  const v6 = [
    `fd00a3bf000000000000000000000007 80 ${zero} 00 ${zero} 00000400 00000001 00000000 00000001 ${ifname}`,
    `00000000000000000000ffffc6120009 80 ${zero} 00 ${zero} 00000400 00000001 00000000 00000001 ${ifname}`,
    `fd00a3bf000000000000000000000000 40 ${zero} 00 ${zero} 00000400 00000001 00000000 00000001 ${ifname}`,
  ];
  await writeFile(join(dir, 'route'), v4.join('\n') + '\n');
  await writeFile(join(dir, 'ipv6_route'), v6.join('\n') + '\n');
  const link = { ifname, ifindex: ifIndex(ifname), mac: '' };
  t.same(
    [...readHostRoutes(dir)],
    [
      ['198.18.0.7', link],
      ['fd00:a3bf::7', link],
      ['198.18.0.9', link],
    ],
  );
});
