// Opening the inpod datapath over the pins of an older ambpf: the per-packet tcx link on a pod's lo
// (inpod-<cookie>-lo) and the sockops link are gone after open(), pods armed before keep their
// sk_lookup link, and nothing else is touched.
import t from 'tap';
import { existsSync, renameSync } from 'node:fs';
import { linkPin, inpodLinkName, inpodLoLinkName } from '../../src/bpf/pins.ts';
import { makeEnv, openInpod, captureInpod } from './env.ts';

t.test("an older ambpf's lo and sockops links are removed when the datapath opens", async (t) => {
  const env = await makeEnv(t);
  const first = await openInpod(t, env);
  const cookie = captureInpod(env, first, 'a');
  const cookieB = captureInpod(env, first, 'b');
  // Stand-ins for what an older ambpf pinned: real links, under the old names.
  const lo = linkPin(env.bpffs, inpodLoLinkName(cookie));
  const sockops = linkPin(env.bpffs, 'sockops');
  renameSync(linkPin(env.bpffs, inpodLinkName(cookie)), lo);
  renameSync(linkPin(env.bpffs, 'getsockopt'), sockops);
  t.ok(existsSync(lo) && existsSync(sockops), 'the old pins are in place');
  first.close();

  await openInpod(t, env);
  t.notOk(existsSync(lo), 'inpod-<cookie>-lo removed');
  t.notOk(existsSync(sockops), 'sockops removed');
  t.ok(existsSync(linkPin(env.bpffs, 'getsockopt')), 'getsockopt attached again');
  t.ok(existsSync(linkPin(env.bpffs, inpodLinkName(cookieB))), "the other pod's sk_lookup link kept");
});
