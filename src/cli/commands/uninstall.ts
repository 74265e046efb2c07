// `ambpf uninstall`: detach and unpin everything ambpf made under --bpffs, undo what its ledger says
// it changed elsewhere (sysctls back to the values found, the rules and routes it added, in the netns
// where it added them), remove the state file and the ledger, and say what was removed. Nothing else.
// Safe to run twice and on a node where ambpf never ran.
import { parseArgs } from 'node:util';
import { existsSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Command } from '../command.ts';
import { logger } from '../../log.ts';

const log = logger('uninstall');

const USAGE = `Usage: ambpf uninstall [--bpffs DIR] [--state-file F] [-j]

Detaches every program ambpf attached (cgroup links, tc links, sk_lookup), unpins its maps and
links under DIR (default /sys/fs/bpf/ambpf), and undoes what ambpf recorded in its ledger
(changes<DIR>.json next to the state file F) when it changed something outside DIR: every sysctl back to the value
it found (rp_filter on ztunnel's host veth, tcp_fwmark_accept and tcp_migrate_req in pod netns), the
policy rule and route in ztunnel's netns and the return-path rule and table 41919 in pod netns. Then
it removes the state file F (default /run/ambpf/state.json) and prints what it removed. Pins ambpf
did not make are left alone. Traffic then flows as if ambpf had never been installed.
`;

export const command: Command = {
  summary: 'detach and unpin everything ambpf made, restore what it changed, report it',
  usage: USAGE,
  async run(argv) {
    const { values } = parseArgs({
      args: [...argv],
      options: {
        bpffs: { type: 'string', default: '/sys/fs/bpf/ambpf' },
        'state-file': { type: 'string', default: '/run/ambpf/state.json' },
        json: { type: 'boolean', short: 'j' },
      },
      strict: true,
    });
    const bpffs = values.bpffs;
    const { uninstallDatapath } = await import('../../bpf/datapath.ts');
    const { removePolicyRoute } = await import('../../bpf/datapath-ztunnel.ts');
    const { BpfLink } = await import('../../libbpf/index.ts');
    const { netnsPathByIno } = await import('../../status/targets.ts');
    const { ledgerPath, readLedger } = await import('../../bpf/sysctl.ts');
    const { SK_LOOKUP_LINK, linkPin } = await import('../../bpf/pins.ts');

    // The loader keeps its ledger next to its state file.
    const ledger = ledgerPath(bpffs, dirname(values['state-file']));
    const recorded = readLedger(ledger);
    // An install from before the ledger: its policy route is known only by the sk_lookup link's netns
    // and the defaults it always used (eth0, table 100, pref 100).
    const routes: string[] = [];
    const skLookupPin = linkPin(bpffs, SK_LOOKUP_LINK);
    if (existsSync(skLookupPin) && !recorded.some((e) => e.kind === 'route' && e.what === 'ztunnel-policy')) {
      const link = BpfLink.openPinned(skLookupPin);
      try {
        const ino = link.info().netnsIno;
        const netnsPath = ino === undefined ? null : netnsPathByIno(ino);
        if (netnsPath) {
          await removePolicyRoute({ netnsPath, ifname: 'eth0', table: 100, pref: 100 });
          routes.push(`ip rule pref 100 iif eth0 lookup 100 + local route in table 100 in ${netnsPath}`);
        } else {
          log.warn("ztunnel's netns is gone; no policy route to remove");
        }
      } finally {
        link.close();
      }
    }
    const { undone, ...report } = uninstallDatapath(bpffs, { ledger, findNetns: netnsPathByIno });
    routes.push(...undone.routes);
    const stateFile = existsSync(values['state-file']) ? values['state-file'] : null;
    if (stateFile) rmSync(stateFile, { force: true });
    // What the loader found about ztunnel's cgroup, named after the state file.
    rmSync((await import('../../agent/ztunnel-cgroup.ts')).ztunnelCgroupFile(values['state-file']), { force: true });
    const out = {
      bpffs,
      ...report,
      sysctls: undone.sysctls,
      routes,
      goneWithTheirNetns: undone.gone,
      failed: undone.failed,
      stateFile,
      // kept for scripts of earlier versions
      policyRouteRemovedIn: routes.length > 0 ? routes[0]!.replace(/^.* in /, '') : null,
    };
    if (values.json) {
      process.stdout.write(JSON.stringify(out) + '\n');
    } else {
      const lines: string[] = [];
      if (report.links.length > 0 || report.maps.length > 0) {
        const clsact = report.clsact.length > 0 ? `, removed ${report.clsact.length} clsact filters` : '';
        lines.push(
          `detached ${report.links.length} links (${report.links.join(', ') || '-'})${clsact}, unpinned ${report.maps.length} maps under ${bpffs}`,
        );
      } else {
        lines.push(`nothing of ambpf's under ${bpffs}`);
      }
      for (const s of undone.sysctls) lines.push(`restored ${s}`);
      for (const r of routes) lines.push(`removed ${r}`);
      if (stateFile) lines.push(`removed the state file ${stateFile}`);
      for (const f of undone.failed) lines.push(`COULD NOT UNDO ${f} (kept in ${ledger}; run uninstall again)`);
      process.stdout.write(lines.join('\n') + '\n');
    }
    return undone.failed.length > 0 ? 1 : 0;
  },
};
