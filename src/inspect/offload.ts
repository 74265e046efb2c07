// bpftool's print_dev_plain/print_dev_json: only for objects offloaded to a device (ifindex != 0),
// named when the device lives in our own network namespace.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import type { InspectContext } from './context.ts';

function ifnameInOurNetns(ifindex: number, nsDev: bigint, nsIno: bigint): string | undefined {
  try {
    const st = statSync('/proc/self/ns/net', { bigint: true });
    // bpftool compares through 32-bit parameters; the values fit.
    if (
      BigInt.asUintN(32, st.dev) !== BigInt.asUintN(32, nsDev) ||
      BigInt.asUintN(32, st.ino) !== BigInt.asUintN(32, nsIno)
    )
      return undefined;
    for (const name of readdirSync('/sys/class/net')) {
      if (Number(readFileSync(`/sys/class/net/${name}/ifindex`, 'latin1').trim()) === ifindex) return name;
    }
  } catch {
    return undefined;
  }
  return undefined;
}

export function devPlain(ifindex: number, nsDev: bigint, nsIno: bigint): string {
  if (!ifindex) return '';
  const name = ifnameInOurNetns(ifindex, nsDev, nsIno);
  return `  offloaded_to ${name ?? `ifindex ${ifindex} ns_dev ${nsDev} ns_ino ${nsIno}`}`;
}

export function devJson(ctx: InspectContext, ifindex: number, nsDev: bigint, nsIno: bigint): void {
  if (!ifindex) return;
  const w = ctx.w;
  w.name('dev');
  w.startObject();
  w.intField('ifindex', ifindex);
  w.intField('ns_dev', nsDev);
  w.intField('ns_inode', nsIno);
  const name = ifnameInOurNetns(ifindex, nsDev, nsIno);
  if (name !== undefined) w.stringField('ifname', name);
  w.endObject();
}
