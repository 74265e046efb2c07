// The stand-in's DNS proxy answers the names ztunnel answers (src/dns/server.rs in istio/ztunnel): the
// Kubernetes expansions of short names from the client's namespace, names with a search domain
// appended (a CNAME to the name found), only A and AAAA, only the first question. Pure: no sockets.
import t from 'tap';
import dnsPacket, { type Answer, type Packet } from 'dns-packet';
import { aliasesOf, answerFromZone, kubeFqdns } from '../../src/testbed/ztunnel/dns.ts';

t.test("short names expand as ztunnel's to_kube_fqdns (its test table, client in ns1)", async (t) => {
  const cases: Array<[string, string[]]> = [
    ['name', ['name.ns1.svc.cluster.local']],
    ['name.ns2', ['name.ns2.svc.cluster.local', 'name.ns2.ns1.svc.cluster.local']],
    ['name.ns2.svc', ['name.ns2.svc.cluster.local', 'name.ns2.svc.svc.cluster.local']],
    ['name.ns2.not-svc', ['name.ns2.not-svc.svc.cluster.local']],
    ['pod.sub-domain.ns.svc', ['pod.sub-domain.ns.svc.cluster.local']],
    ['pod.sub-domain.ns.not-svc', []],
    ['name.ns2.svc.cluster', []],
    ['name.ns2.svc.cluster.local', []],
    ['www.google.com', ['www.google.com.svc.cluster.local']],
  ];
  for (const [host, want] of cases) t.same(kubeFqdns(host, 'ns1'), want, host);
});

t.test('aliases: the name, its expansions, then each search domain taken off', async (t) => {
  t.same(
    aliasesOf('web.mesh.svc.cluster.local.mesh.svc.cluster.local', 'mesh').map((a) => [a.name, a.stripped]),
    [
      ['web.mesh.svc.cluster.local.mesh.svc.cluster.local', undefined],
      ['web.mesh.svc.cluster.local', 'web.mesh.svc.cluster.local'],
      ['web.mesh.svc.cluster.local.mesh', 'web.mesh.svc.cluster.local.mesh'],
      ['web.mesh.svc.cluster.local.mesh.svc', 'web.mesh.svc.cluster.local.mesh.svc'],
    ],
  );
  t.same(
    aliasesOf('web.other', 'mesh').map((a) => a.name),
    ['web.other', 'web.other.svc.cluster.local', 'web.other.mesh.svc.cluster.local'],
  );
  t.same(aliasesOf('web', undefined), [{ name: 'web' }], 'no client namespace: the name alone');
});

const records = new Map([['web.mesh.svc.cluster.local', ['198.19.1.4', 'fd00:a3bf::4']]]);
const ask = (name: string, type: 'A' | 'AAAA' | 'TXT' = 'A', ns: string | undefined = 'mesh'): Packet | undefined => {
  const raw = answerFromZone(
    { id: 7, type: 'query', flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name, class: 'IN' }] },
    records,
    ns,
  );
  return raw === undefined ? undefined : dnsPacket.decode(raw);
};

/** [type, name, data] of each answer (an OPT record has no data). */
const rows = (p: Packet | undefined): unknown[][] =>
  (p?.answers ?? []).map((a: Answer) => [a.type, a.name, 'data' in a ? a.data : undefined]);

t.test('answers from the zone', async (t) => {
  const full = ask('web.mesh.svc.cluster.local');
  t.same(rows(full), [['A', 'web.mesh.svc.cluster.local', '198.19.1.4']]);
  t.ok(((full?.flags ?? 0) & dnsPacket.AUTHORITATIVE_ANSWER) !== 0, 'authoritative');
  t.equal(full?.id, 7);
  t.same(rows(ask('web')), [['A', 'web', '198.19.1.4']], 'a short name from the same namespace');
  t.same(rows(ask('web.mesh', 'AAAA')), [['AAAA', 'web.mesh', 'fd00:a3bf::4']], '<svc>.<ns>, AAAA');
  t.equal(ask('web', 'A', 'other'), undefined, 'a short name from another namespace: forwarded');
  const searched = ask('web.mesh.svc.cluster.local.mesh.svc.cluster.local');
  t.same(
    rows(searched),
    [
      ['CNAME', 'web.mesh.svc.cluster.local.mesh.svc.cluster.local', 'web.mesh.svc.cluster.local'],
      ['A', 'web.mesh.svc.cluster.local', '198.19.1.4'],
    ],
    'a search domain glibc appended: CNAME to the name, then its address',
  );
  t.equal(ask('web.mesh.svc.cluster.local', 'TXT'), undefined, 'a type other than A/AAAA: forwarded, as ztunnel');
  t.equal(ask('other.test'), undefined, 'a name outside the zone: forwarded');
  const nodata = answerFromZone(
    { id: 1, type: 'query', questions: [{ type: 'AAAA', name: 'v4only', class: 'IN' }] },
    new Map([['v4only', ['198.19.1.9']]]),
  );
  t.same(nodata && dnsPacket.decode(nodata).answers, [], 'a known name without that family: NODATA');
});
