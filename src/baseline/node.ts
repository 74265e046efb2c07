// The seed's node-topology path (Istio 1.15-1.17, docs/istio-ambient.md#the-node-topology-before-in-pod), with the
// Geneve hops replaced by policy routes via the ztunnel pod's veth (this kernel has no Geneve):
// on the node, the ztunnel-* mangle chains and marks (0x100 outbound, 0x200 skip, 0x220 conn-skip,
// 0x210 proxy, 0x040 proxy-return), ipset ztunnel-pods-ips, ip rules 100-103 and tables 100-102;
// inside the ztunnel pod, TPROXY to 15001/15008/15006 with mark 0x400 and `local default` table 100.
// Without Geneve the ztunnel pod cannot tell outbound from inbound by interface (pistioout/pistioin),
// so it tells them by source: a packet from one of its node's mesh pods is outbound capture.
import type { TestbedInfo, TestbedPod } from '../testbed/types.ts';
import { PROBE_SOURCE } from '../testbed/addresses.ts';
import type { NetnsRules } from './ruleset.ts';

const SET = 'ztunnel-pods-ips';

function ztunnelPod(info: TestbedInfo, node: string): TestbedPod {
  const z = info.ztunnels.find((x) => x.node === node);
  const pod = info.pods.find((p) => p.isZtunnel && p.node === node);
  if (!z || !pod) throw new RangeError(`node ${node} has no ztunnel pod`);
  return pod;
}

function meshIps(info: TestbedInfo, node: string): string[] {
  return info.pods.filter((p) => p.mesh && p.node === node).map((p) => p.ip);
}

export function nodeRules(info: TestbedInfo, node: string): NetnsRules {
  const n = info.nodes.find((x) => x.name === node);
  if (!n) throw new RangeError(`unknown node ${node}`);
  const z = ztunnelPod(info, node);
  const zv = z.hostIfname;
  const connSave = (chain: string): string[] => [
    `-A ${chain} -m mark --mark 0x220/0x220 -j CONNMARK --save-mark --nfmask 0x220 --ctmask 0x220`,
    `-A ${chain} -m mark --mark 0x210/0x210 -j CONNMARK --save-mark --nfmask 0x210 --ctmask 0x210`,
  ];
  return {
    netnsPath: n.netnsPath,
    ipsets: [{ name: SET, type: 'hash:ip', members: meshIps(info, node).map((ip) => ({ ip })) }],
    ip6tables: [],
    iptables: [
      {
        table: 'mangle',
        chains: ['ztunnel-FORWARD', 'ztunnel-INPUT', 'ztunnel-OUTPUT', 'ztunnel-PREROUTING'],
        rules: [
          '-A PREROUTING -j ztunnel-PREROUTING',
          '-A INPUT -j ztunnel-INPUT',
          '-A FORWARD -j ztunnel-FORWARD',
          '-A OUTPUT -j ztunnel-OUTPUT',
          ...connSave('ztunnel-FORWARD'),
          ...connSave('ztunnel-INPUT'),
          // The node's own connections (kubelet probes: the node IP, or the probe source) skip ztunnel;
          // saving the mark lets the pod's replies skip it too (the seed saved it in POSTROUTING for Geneve).
          `-A ztunnel-OUTPUT -s ${n.wireIp}/32 -j MARK --set-xmark 0x220/0xffffffff`,
          `-A ztunnel-OUTPUT -s ${PROBE_SOURCE}/32 -j MARK --set-xmark 0x220/0xffffffff`,
          '-A ztunnel-OUTPUT -m mark --mark 0x220/0x220 -j CONNMARK --save-mark --nfmask 0x220 --ctmask 0x220',
          '-A ztunnel-PREROUTING -m connmark --mark 0x220/0x220 -j MARK --set-xmark 0x200/0x200',
          '-A ztunnel-PREROUTING -m mark --mark 0x200/0x200 -j RETURN',
          `-A ztunnel-PREROUTING ! -i ${zv} -m connmark --mark 0x210/0x210 -j MARK --set-xmark 0x40/0x40`,
          '-A ztunnel-PREROUTING -m mark --mark 0x40/0x40 -j RETURN',
          `-A ztunnel-PREROUTING ! -s ${z.ip}/32 -i ${zv} -j MARK --set-xmark 0x210/0x210`,
          '-A ztunnel-PREROUTING -m mark --mark 0x200/0x200 -j RETURN',
          `-A ztunnel-PREROUTING -i ${zv} -j MARK --set-xmark 0x220/0x220`,
          '-A ztunnel-PREROUTING -p udp -j MARK --set-xmark 0x220/0x220',
          '-A ztunnel-PREROUTING -m mark --mark 0x200/0x200 -j RETURN',
          `-A ztunnel-PREROUTING -p tcp -m set --match-set ${SET} src -j MARK --set-xmark 0x100/0x100`,
        ],
      },
    ],
    ipRules: [
      'pref 100 fwmark 0x200/0x200 goto 32766',
      'pref 101 fwmark 0x100/0x100 lookup 101',
      'pref 102 fwmark 0x40/0x40 lookup 102',
      'pref 103 lookup 100',
    ],
    ipRoutes: [
      // Outbound (0x100) and proxy-return (0x040) go to ztunnel; inbound to a mesh pod goes to ztunnel.
      `${z.ip} dev ${zv} scope link table 101`,
      `default via ${z.ip} dev ${zv} onlink table 101`,
      `${z.ip} dev ${zv} scope link table 102`,
      `default via ${z.ip} dev ${zv} onlink table 102`,
      `${z.ip} dev ${zv} scope link table 100`,
      ...meshIps(info, node).map((ip) => `${ip} via ${z.ip} dev ${zv} onlink table 100`),
    ],
  };
}

/** Inside the ztunnel pod: TPROXY what the node sent (destination not ztunnel itself) to the right listener. */
export function ztunnelPodRules(info: TestbedInfo, node: string): NetnsRules {
  const z = ztunnelPod(info, node);
  const tproxy = (match: string, port: number): string =>
    `-A PREROUTING ! -d ${z.ip}/32 -i eth0 -p tcp ${match}-j TPROXY --on-port ${port} --on-ip 127.0.0.1 --tproxy-mark 0x400/0xfff`;
  return {
    netnsPath: z.netnsPath,
    ipsets: [{ name: SET, type: 'hash:ip', members: meshIps(info, node).map((ip) => ({ ip })) }],
    ip6tables: [],
    iptables: [
      {
        table: 'mangle',
        chains: [],
        rules: [
          tproxy(`-m set --match-set ${SET} src `, 15001),
          tproxy('-m tcp --dport 15008 ', 15008),
          tproxy('', 15006),
        ],
      },
    ],
    ipRules: ['pref 20000 fwmark 0x400/0xfff lookup 100'],
    ipRoutes: ['local default dev lo table 100'],
  };
}
