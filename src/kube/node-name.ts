// Which node ambpf serves: --node, else NODE_NAME (a DaemonSet sets it from spec.nodeName through
// the downward API), else the hostname (kubelet's default node name).
import { hostname } from 'node:os';

export interface NodeNameInputs {
  readonly flag?: string | undefined;
  readonly env?: NodeJS.ProcessEnv;
  readonly hostname?: () => string;
}

export function resolveNodeName(inputs: NodeNameInputs = {}): string {
  const env = inputs.env ?? process.env;
  const fromFlag = inputs.flag?.trim();
  if (fromFlag) return fromFlag;
  const fromEnv = env['NODE_NAME']?.trim();
  if (fromEnv) return fromEnv;
  // kubelet lowercases the hostname when it registers the node.
  return (inputs.hostname ?? hostname)().trim().toLowerCase();
}
