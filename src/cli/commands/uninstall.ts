// `ambpf uninstall`: detach and unpin everything ambpf made under --bpffs, and the policy route it
// added in ztunnel's netns; nothing else. Safe to run twice and on a node where ambpf never ran.
import { parseArgs } from 'node:util';
import { existsSync } from 'node:fs';
import type { Command } from '../command.ts';
import { logger } from '../../log.ts';

const log = logger('uninstall');

const USAGE = `Usage: ambpf uninstall [--bpffs DIR] [-j]

Detaches every program ambpf attached (cgroup links, tc links, sk_lookup), unpins its maps and
links under DIR (default /sys/fs/bpf/ambpf) and removes the policy route ambpf added in ztunnel's
network namespace. Pins ambpf did not make are left alone. Traffic then flows as if ambpf had never
been installed (pods talk directly, without ztunnel).
`;

export const command: Command = {
  summary: 'detach and unpin everything ambpf made under --bpffs, nothing else',
  usage: USAGE,
  async run(argv) {
    const { values } = parseArgs({
      args: [...argv],
      options: { bpffs: { type: 'string', default: '/sys/fs/bpf/ambpf' }, json: { type: 'boolean', short: 'j' } },
      strict: true,
    });
    const bpffs = values.bpffs;
    const { uninstallDatapath } = await import('../../bpf/datapath.ts');
    const { removePolicyRoute } = await import('../../bpf/datapath-ztunnel.ts');
    const { BpfLink } = await import('../../libbpf/index.ts');
    const { netnsPathByIno } = await import('../../status/targets.ts');
    const { SK_LOOKUP_LINK, linkPin } = await import('../../bpf/pins.ts');

    // The sk_lookup link names ztunnel's netns; its policy route goes with it.
    let routeRemovedIn: string | undefined;
    const skLookupPin = linkPin(bpffs, SK_LOOKUP_LINK);
    if (existsSync(skLookupPin)) {
      const link = BpfLink.openPinned(skLookupPin);
      try {
        const ino = link.info().netnsIno;
        const netnsPath = ino === undefined ? null : netnsPathByIno(ino);
        if (netnsPath) {
          await removePolicyRoute({ netnsPath, ifname: 'eth0', table: 100, pref: 100 });
          routeRemovedIn = netnsPath;
        } else {
          log.warn('ztunnel\'s netns is gone; no policy route to remove');
        }
      } finally {
        link.close();
      }
    }
    const report = existsSync(bpffs) ? uninstallDatapath(bpffs) : { links: [], maps: [], clsact: [] };
    if (values.json) {
      process.stdout.write(JSON.stringify({ bpffs, ...report, policyRouteRemovedIn: routeRemovedIn ?? null }) + '\n');
    } else if (report.links.length === 0 && report.maps.length === 0) {
      process.stdout.write(`nothing of ambpf's under ${bpffs}\n`);
    } else {
      const clsact = report.clsact.length > 0 ? `, removed ${report.clsact.length} clsact filters` : '';
      process.stdout.write(`detached ${report.links.length} links (${report.links.join(', ') || '-'})${clsact}, unpinned ${report.maps.length} maps under ${bpffs}\n`);
    }
    return 0;
  },
};
