// Istio 1.28's native nftables in-pod path (inet tables istio-ambient-nat/-mangle/-raw in each mesh
// pod's netns + 0x111 policy route, the probe SNAT in the node's istio-ambient-nat) end to end with
// the ztunnel stand-in listening inside each mesh pod.
import t from 'tap';
import { runScenarios } from './scenarios.ts';

await runScenarios(t, 'inpod', 'nftables');
