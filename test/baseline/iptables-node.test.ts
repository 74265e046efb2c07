// Istio's node-topology iptables path (marks, ipset, policy routing to the ztunnel veth, TPROXY in
// ztunnel's netns) end to end with the ztunnel stand-in.
import t from 'tap';
import { runScenarios } from './scenarios.ts';

await runScenarios(t, 'node');
