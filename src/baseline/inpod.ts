// Istio 1.21+ in-pod redirection (istio-redirection.md, "Today's path"): the golden rules inside each
// mesh pod's netns, the 0x111 connmark policy route, and on the node the SNAT of kubelet-like probes
// to 169.254.7.127 for the node's mesh pods.
import type { TestbedInfo } from '../testbed/types.ts';
import type { NetnsRules } from './ruleset.ts';

export function inpodPodRules(netnsPath: string): NetnsRules {
  return {
    netnsPath,
    ipsets: [],
    iptables: [
      {
        table: 'mangle',
        chains: ['ISTIO_OUTPUT', 'ISTIO_PRERT'],
        rules: [
          '-A PREROUTING -j ISTIO_PRERT',
          '-A OUTPUT -j ISTIO_OUTPUT',
          '-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff',
          '-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff',
        ],
      },
      {
        table: 'nat',
        chains: ['ISTIO_OUTPUT', 'ISTIO_PRERT'],
        rules: [
          '-A PREROUTING -j ISTIO_PRERT',
          '-A OUTPUT -j ISTIO_OUTPUT',
          '-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT',
          '-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-ports 15053',
          '-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053',
          '-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT',
          '-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT',
          '-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001',
          '-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT',
          '-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006',
        ],
      },
      {
        table: 'raw',
        chains: ['ISTIO_OUTPUT', 'ISTIO_PRERT'],
        rules: [
          '-A PREROUTING -j ISTIO_PRERT',
          '-A OUTPUT -j ISTIO_OUTPUT',
          '-A ISTIO_OUTPUT -p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1',
          '-A ISTIO_PRERT -p udp -m mark ! --mark 0x539/0xfff -m udp --sport 53 -j CT --zone 1',
        ],
      },
    ],
    ipRules: ['fwmark 0x111/0xfff pref 32764 lookup 100'],
    ipRoutes: ['local 0.0.0.0/0 dev lo table 100'],
  };
}

/** Node side: SNAT probes from node processes to its mesh pods, so the pods' rules can skip them. */
export function inpodNodeRules(info: TestbedInfo, node: string): NetnsRules {
  const n = info.nodes.find((x) => x.name === node);
  if (!n) throw new RangeError(`unknown node ${node}`);
  return {
    netnsPath: n.netnsPath,
    ipsets: [{ name: 'istio-inpod-probes-v4', type: 'hash:ip', members: info.pods.filter((p) => p.mesh && p.node === node).map((p) => p.ip) }],
    iptables: [
      {
        table: 'nat',
        chains: ['ISTIO_POSTRT'],
        rules: [
          '-A POSTROUTING -j ISTIO_POSTRT',
          '-A ISTIO_POSTRT -p tcp -m owner --socket-exists -m set --match-set istio-inpod-probes-v4 dst -j SNAT --to-source 169.254.7.127',
        ],
      },
    ],
    ipRules: [],
    ipRoutes: [],
  };
}
