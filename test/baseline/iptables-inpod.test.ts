// Istio's in-pod iptables path (golden rules in each mesh pod's netns + 0x111 policy route, probe SNAT
// on the node) end to end with the ztunnel stand-in listening inside each mesh pod.
import t from 'tap';
import { runScenarios } from './scenarios.ts';

await runScenarios(t, 'inpod');
