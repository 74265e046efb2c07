// The baseline agent with Istio's iptables in-pod rules, serving ZDS to the per-node ztunnel stand-in:
// the whole in-pod design end to end (see agent-scenarios.ts).
import t from 'tap';
import { runAgentScenarios } from './agent-scenarios.ts';

await runAgentScenarios(t, 'iptables');
