// Reading a testbed spec from a YAML or JSON file (`ambpf testbed up --spec FILE`): untrusted input,
// checked field by field so a mistake is named instead of crashing later.
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { TestbedSpecError } from './errors.ts';
import { normalizeSpec, type IpFamily, type Labels, type TestbedSpec } from './spec.ts';

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function labels(v: unknown, where: string): Labels {
  if (v === undefined) return {};
  if (!isRecord(v) || Object.values(v).some((x) => typeof x !== 'string'))
    throw new TestbedSpecError(`${where} must map strings to strings`);
  return v as Labels;
}

function str(v: unknown, where: string): string {
  if (typeof v !== 'string' || v === '') throw new TestbedSpecError(`${where} must be a non-empty string`);
  return v;
}

function list(v: unknown, where: string): unknown[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new TestbedSpecError(`${where} must be a list`);
  return v;
}

function families(v: unknown, where: string): IpFamily[] {
  return list(v, where).map((f, j) => {
    if (f !== 'IPv4' && f !== 'IPv6') throw new TestbedSpecError(`${where}[${j}] must be "IPv4" or "IPv6"`);
    return f;
  });
}

export function specFromObject(raw: unknown): TestbedSpec {
  if (!isRecord(raw)) throw new TestbedSpecError('the spec must be a mapping with nodes, namespaces and pods');
  const spec: TestbedSpec = {
    nodes: list(raw['nodes'], 'nodes').map((n, i) => {
      if (!isRecord(n)) throw new TestbedSpecError(`nodes[${i}] must be a mapping`);
      if (n['ztunnel'] !== undefined && typeof n['ztunnel'] !== 'boolean')
        throw new TestbedSpecError(`nodes[${i}].ztunnel must be true or false`);
      const ztunnelIpFamilies = families(n['ztunnelIpFamilies'], `nodes[${i}].ztunnelIpFamilies`);
      return {
        name: str(n['name'], `nodes[${i}].name`),
        ztunnel: (n['ztunnel'] as boolean | undefined) ?? true,
        ...(ztunnelIpFamilies.length ? { ztunnelIpFamilies } : {}),
      };
    }),
    namespaces: list(raw['namespaces'], 'namespaces').map((n, i) => {
      if (!isRecord(n)) throw new TestbedSpecError(`namespaces[${i}] must be a mapping`);
      return { name: str(n['name'], `namespaces[${i}].name`), labels: labels(n['labels'], `namespaces[${i}].labels`) };
    }),
    pods: list(raw['pods'], 'pods').map((p, i) => {
      if (!isRecord(p)) throw new TestbedSpecError(`pods[${i}] must be a mapping`);
      const containers = list(p['containers'], `pods[${i}].containers`).map((c, j) =>
        str(c, `pods[${i}].containers[${j}]`),
      );
      const ipFamilies = families(p['ipFamilies'], `pods[${i}].ipFamilies`);
      return {
        name: str(p['name'], `pods[${i}].name`),
        namespace: str(p['namespace'], `pods[${i}].namespace`),
        node: str(p['node'], `pods[${i}].node`),
        labels: labels(p['labels'], `pods[${i}].labels`),
        annotations: labels(p['annotations'], `pods[${i}].annotations`),
        hostNetwork: p['hostNetwork'] === true,
        ...(containers.length ? { containers } : {}),
        ...(ipFamilies.length ? { ipFamilies } : {}),
      };
    }),
  };
  normalizeSpec(spec); // throws on unknown nodes, duplicates, bad names
  return spec;
}

export function readSpecFile(path: string): TestbedSpec {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new TestbedSpecError(`cannot read ${path} (${(e as NodeJS.ErrnoException).code ?? String(e)})`, { path });
  }
  let raw: unknown;
  try {
    raw = parse(text);
  } catch (e) {
    throw new TestbedSpecError(`${path} is not YAML or JSON: ${(e as Error).message.split('\n')[0]}`, { path });
  }
  return specFromObject(raw);
}
