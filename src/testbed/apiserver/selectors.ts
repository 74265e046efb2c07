// Label and field selectors as kube-apiserver parses them (k8s.io/apimachinery labels.Parse and
// fields.ParseSelector), for the fake API server. A selector the real server would reject is
// rejected here too (SelectorError -> 400 BadRequest), so a client bug cannot pass against the fake.

export class SelectorError extends Error {
  override readonly name = 'SelectorError';
}

type Obj = Record<string, unknown>;
export type Matcher = (obj: Obj) => boolean;

const KEY = String.raw`(?:[a-z0-9A-Z](?:[-a-z0-9A-Z_.]*[a-z0-9A-Z])?\/)?[a-z0-9A-Z](?:[-a-z0-9A-Z_.]*[a-z0-9A-Z])?`;
const VALUE = String.raw`(?:[a-z0-9A-Z](?:[-a-z0-9A-Z_.]*[a-z0-9A-Z])?)?`;
const RE_EXISTS = new RegExp(`^(${KEY})$`);
const RE_NOT_EXISTS = new RegExp(`^!\\s*(${KEY})$`);
const RE_EQUALITY = new RegExp(`^(${KEY})\\s*(==|=|!=)\\s*(${VALUE})$`);
const RE_SET = new RegExp(`^(${KEY})\\s+(in|notin)\\s*\\(([^()]*)\\)$`);
const RE_VALUE = new RegExp(`^${VALUE}$`);

/** Splits on commas that are not inside parentheses: `a in (x,y),b` is two requirements. */
function splitRequirements(text: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let current = '';
  for (const ch of text) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (depth < 0) throw new SelectorError(`unbalanced parentheses in selector ${JSON.stringify(text)}`);
    if (ch === ',' && depth === 0) {
      parts.push(current.trim());
      current = '';
    } else {
      current += ch;
    }
  }
  if (depth !== 0) throw new SelectorError(`unbalanced parentheses in selector ${JSON.stringify(text)}`);
  parts.push(current.trim());
  return parts;
}

function labelsOf(obj: Obj): Record<string, string> {
  const meta = obj['metadata'];
  const labels = meta !== null && typeof meta === 'object' ? (meta as Obj)['labels'] : undefined;
  return labels !== null && typeof labels === 'object' ? (labels as Record<string, string>) : {};
}

function parseLabelRequirement(req: string): Matcher {
  let m = RE_NOT_EXISTS.exec(req);
  if (m) {
    const key = m[1]!;
    return (o) => !(key in labelsOf(o));
  }
  m = RE_EXISTS.exec(req);
  if (m) {
    const key = m[1]!;
    return (o) => key in labelsOf(o);
  }
  m = RE_EQUALITY.exec(req);
  if (m) {
    const [, key, op, value] = m as unknown as [string, string, string, string];
    // `!=` also matches objects without the label (labels.Requirement semantics).
    if (op === '!=') return (o) => labelsOf(o)[key] !== value;
    return (o) => labelsOf(o)[key] === value;
  }
  m = RE_SET.exec(req);
  if (m) {
    const [, key, op, list] = m as unknown as [string, string, string, string];
    const values = list.split(',').map((v) => v.trim());
    if (values.length === 0 || values.some((v) => v === '' || !RE_VALUE.test(v))) {
      throw new SelectorError(`invalid value list in label selector requirement ${JSON.stringify(req)}`);
    }
    if (op === 'notin')
      return (o) => {
        const v = labelsOf(o)[key];
        return v === undefined || !values.includes(v);
      };
    return (o) => {
      const v = labelsOf(o)[key];
      return v !== undefined && values.includes(v);
    };
  }
  throw new SelectorError(`unable to parse requirement: ${JSON.stringify(req)}`);
}

/** Parses a labelSelector query value; the empty selector matches everything. */
export function parseLabelSelector(text: string | null): Matcher {
  if (text === null || text.trim() === '') return () => true;
  const reqs = splitRequirements(text).map((r) => {
    if (r === '') throw new SelectorError(`empty requirement in label selector ${JSON.stringify(text)}`);
    return parseLabelRequirement(r);
  });
  return (o) => reqs.every((r) => r(o));
}

/** The field labels each kind supports (pkg/registry/core/*\/strategy.go ToSelectableFields). */
const FIELD_PATHS: Readonly<Record<string, Readonly<Record<string, readonly string[]>>>> = {
  Pod: {
    'metadata.name': ['metadata', 'name'],
    'metadata.namespace': ['metadata', 'namespace'],
    'spec.nodeName': ['spec', 'nodeName'],
    'spec.restartPolicy': ['spec', 'restartPolicy'],
    'spec.schedulerName': ['spec', 'schedulerName'],
    'spec.serviceAccountName': ['spec', 'serviceAccountName'],
    'spec.hostNetwork': ['spec', 'hostNetwork'],
    'status.phase': ['status', 'phase'],
    'status.podIP': ['status', 'podIP'],
    'status.nominatedNodeName': ['status', 'nominatedNodeName'],
  },
  Namespace: {
    'metadata.name': ['metadata', 'name'],
    'status.phase': ['status', 'phase'],
  },
};

function fieldValue(obj: Obj, path: readonly string[]): string {
  let cur: unknown = obj;
  for (const p of path) {
    if (cur === null || typeof cur !== 'object') return '';
    cur = (cur as Obj)[p];
  }
  // Absent fields compare as the empty string (so `spec.nodeName=` selects unscheduled pods);
  // booleans as "true"/"false" like the server's fields.Set.
  if (cur === undefined || cur === null) return path[0] === 'spec' && path[1] === 'hostNetwork' ? 'false' : '';
  return String(cur);
}

/** Parses a fieldSelector query value for `kind`; an unsupported field is a 400 like the real server. */
export function parseFieldSelector(text: string | null, kind: string): Matcher {
  if (text === null || text.trim() === '') return () => true;
  const fields = FIELD_PATHS[kind] ?? {};
  const reqs: Matcher[] = [];
  for (const raw of text.split(',')) {
    const req = raw.trim();
    const m = /^([^=!]+?)\s*(==|=|!=)\s*(.*)$/.exec(req);
    if (!m) throw new SelectorError(`invalid selector: '${text}'; can't understand '${req}'`);
    const [, field, op, value] = m as unknown as [string, string, string, string];
    const path = fields[field];
    if (!path) throw new SelectorError(`field label not supported: ${field}`);
    reqs.push(op === '!=' ? (o) => fieldValue(o, path) !== value : (o) => fieldValue(o, path) === value);
  }
  return (o) => reqs.every((r) => r(o));
}
