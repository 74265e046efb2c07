// The one schema both pod sources run (src/state/schema.ts) and the validator that reports what
// fails it (src/sources/validate.ts): each fault named with the object, the field and the reason.
import t from 'tap';
import { check, describeInvalid, printable } from '../../src/state/schema.ts';
import { SnapshotValidator } from '../../src/sources/validate.ts';
import { computeDesiredState } from '../../src/state/desired.ts';
import { captureLog } from '../helpers/log.ts';
import { INVALID_NAMESPACE, INVALID_PODS, NODE, validNamespace, validPod } from './invalid-objects.ts';

t.test('each invalid pod is named with the field at fault and why', async (t) => {
  for (const c of INVALID_PODS) {
    const r = check('pod', c.object);
    if (!('invalid' in r)) {
      t.fail(`${c.label} passed the schema`);
      continue;
    }
    t.equal(r.invalid.object, c.label, `${c.label}: the object`);
    t.equal(r.invalid.field, c.field, `${c.label}: the field`);
    t.match(r.invalid.reason, c.reason, `${c.label}: the reason (${r.invalid.reason})`);
  }
  const ns = check('namespace', INVALID_NAMESPACE.object);
  t.ok(
    'invalid' in ns && ns.invalid.field === INVALID_NAMESPACE.field && INVALID_NAMESPACE.reason.test(ns.invalid.reason),
    `a namespace label that is not a string: ${'invalid' in ns ? describeInvalid(ns.invalid) : 'passed'}`,
  );
});

t.test('what a valid object may hold: unknown fields, nulls for absent, no status yet', async (t) => {
  const future = validPod('future');
  future['spec'].someFutureField = { x: 1 };
  future['status'].newCondition = [1, 2];
  const pending = validPod('pending');
  delete pending['status'];
  const nulls = validPod('nulls');
  nulls['metadata'].labels = null;
  nulls['spec'].hostNetwork = null;
  const v6 = validPod('v6', 'shop', 'fd00:a3bf::10');
  for (const p of [future, pending, nulls, v6]) t.ok('ok' in check('pod', p), `${p['metadata'].name} is valid`);
  t.ok('ok' in check('namespace', { metadata: { name: 'plain' } }), 'a namespace without labels');
});

t.test('several faults of one object are one report; a non-object is named as such', async (t) => {
  const p = validPod('many');
  p['spec'].hostNetwork = 'no';
  p['status'].phase = false;
  const r = check('pod', p);
  t.ok('invalid' in r);
  if ('invalid' in r) {
    t.equal(r.invalid.field, 'spec.hostNetwork');
    t.same(r.invalid.others, ['status.phase: expected string, got boolean false']);
    t.equal(
      describeInvalid(r.invalid),
      'pod shop/many: spec.hostNetwork: expected boolean, got string "no"; ' +
        'also status.phase: expected string, got boolean false',
    );
  }
  const s = check('pod', 'a string');
  t.ok('invalid' in s && s.invalid.object === 'pod <no namespace>/<no name>' && s.invalid.field === '(the object)');
});

t.test('printable escapes control and bidi characters and cuts long text', async (t) => {
  t.equal(printable('a\tb\u0000c\u007fd\u009be\u202ef'), 'a\\u0009b\\u0000c\\u007fd\\u009be\\u202ef');
  t.equal(printable('x'.repeat(300)).length, 103);
  t.equal(printable('web-1.shop'), 'web-1.shop');
});

t.test('the validator delivers the valid objects and reports each invalid one once, in one line', async (t) => {
  const cap = captureLog();
  const v = new SnapshotValidator(cap.log);
  const good = validPod('good');
  const ns = validNamespace('shop', { 'istio.io/dataplane-mode': 'ambient' });
  const pods = [good, ...INVALID_PODS.map((c) => c.object)];
  const namespaces = [ns, INVALID_NAMESPACE.object];
  const s1 = v.snapshot(pods, namespaces);
  t.same(s1.pods, [good], 'only the valid pod');
  t.same(s1.namespaces, [ns], 'only the valid namespace');
  const lines = cap.with('invalid object skipped');
  t.equal(lines.length, INVALID_PODS.length + 1, 'one line per invalid object');
  for (const c of [...INVALID_PODS, INVALID_NAMESPACE]) {
    const line = lines.find((l) => l['object'] === c.label);
    t.ok(line, `a line names ${c.label}`);
    t.equal(line?.['field'], c.field);
    t.match(String(line?.['reason']), c.reason);
    t.equal(line?.['level'], 50, 'at error level');
    t.ok(String(line?.['msg']).includes(`${c.label}: ${c.field}: `), 'the message says it all on its own');
  }
  // The watch's mirror hands the same objects again with every snapshot: they are not said twice.
  v.snapshot(pods, namespaces);
  t.equal(cap.with('invalid object skipped').length, INVALID_PODS.length + 1, 'no line for objects already reported');
  t.equal(v.invalidTotal, INVALID_PODS.length + 1, 'counted once each');
  // A new version of an object (a new object from the watch) is checked again.
  v.snapshot([structuredClone(INVALID_PODS[0]!.object)], []);
  t.equal(cap.with('invalid object skipped').length, INVALID_PODS.length + 2, 'a new version is reported');
});

t.test('spec.serviceAccountName reaches the desired state as serviceAccount, "default" when unset', async (t) => {
  const withSa = validPod('with-sa');
  withSa['spec'].serviceAccountName = 'reviews';
  const without = validPod('without-sa', 'shop', '198.18.1.11');
  const s = computeDesiredState(
    { pods: [withSa, without], namespaces: [validNamespace('shop', { 'istio.io/dataplane-mode': 'ambient' })] },
    NODE,
  );
  t.same(
    s.ambientPods.map((p) => [p.name, p.serviceAccount]),
    [
      ['with-sa', 'reviews'],
      ['without-sa', 'default'],
    ],
  );
});
