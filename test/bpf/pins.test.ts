// The pin names the datapath writes are the ones uninstall, the status views and a restarted loader
// read back.
import t from 'tap';
import {
  inpodLinkName,
  inpodLoLinkName,
  inpodTcLinkName,
  linkPin,
  mapPin,
  parseLinkName,
  tcLinkName,
  SK_LOOKUP_LINK,
} from '../../src/bpf/pins.ts';

t.test('link pin names round-trip', async (t) => {
  const cookie = 18446744073709551615n; // a netns cookie is a u64
  t.same(parseLinkName(tcLinkName('vethab12')), { kind: 'tc', ifname: 'vethab12' });
  t.same(parseLinkName(tcLinkName('tc-x')), { kind: 'tc', ifname: 'tc-x' }, 'an ifname may itself contain "tc-"');
  t.same(parseLinkName(inpodLinkName(cookie)), { kind: 'inpod', netnsCookie: cookie });
  t.same(parseLinkName(inpodTcLinkName(cookie)), { kind: 'inpod-tc', netnsCookie: cookie });
  t.same(parseLinkName(inpodLoLinkName(cookie)), { kind: 'inpod-lo', netnsCookie: cookie });
  t.same(parseLinkName(SK_LOOKUP_LINK), { kind: 'sk_lookup' });
  for (const other of ['connect4', 'sockops', 'inpod-', 'inpod-12x', 'tc-', 'connect4_new']) {
    t.equal(parseLinkName(other), undefined, `${other} is not a per-target link`);
  }
});

t.test('paths under the bpffs directory', async (t) => {
  t.equal(mapPin('/sys/fs/bpf/ambpf', 'ambpf_pods'), '/sys/fs/bpf/ambpf/ambpf_pods');
  t.equal(linkPin('/sys/fs/bpf/ambpf', tcLinkName('eth1')), '/sys/fs/bpf/ambpf/links/tc-eth1');
  t.equal(linkPin('/sys/fs/bpf/ambpf', inpodTcLinkName(7n)), '/sys/fs/bpf/ambpf/links/inpod-7-tc');
});
