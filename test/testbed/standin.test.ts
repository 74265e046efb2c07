// The ztunnel stand-in's contract at its edges (the happy paths run in test/baseline): a client that
// reaches a ztunnel port directly has no original destination and is refused, not looped; HBONE
// requires mTLS from the test CA and only accepts CONNECT.
import t from 'tap';
import { join } from 'node:path';
import { startTestbed, defaultSpec } from '../../src/testbed/index.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { waitUntil } from '../helpers/wait.ts';

const tb = await startTestbed(defaultSpec(), { topology: 'node', prefix: testPrefix() });
t.teardown(() => tb.down());
const z = tb.ztunnel('node1');

t.test('stand-in listens on 15001/15006/15008 inside the ztunnel pod, dual-stack', async (t) => {
  const r = await tb.exec(`istio-system/${z.pod}`, ['ss', '-Hltn']);
  // ss prints a dual-stack (IPV6_V6ONLY=0) wildcard as "*", a v6-only one as "[::]".
  for (const port of [15001, 15006, 15008]) t.match(r.stdout, ` *:${port} `);
  const cg = await tb.exec('node1', ['cat', join(tb.pod(z.pod).containerCgroupPath, 'cgroup.procs')]);
  t.ok(cg.stdout.trim().split('\n').length >= 2, 'stand-in runs in the ztunnel pod cgroup next to its pause process');
});

t.test('a direct connection to 15001 or 15006 has no original destination: logged and closed', async (t) => {
  for (const port of [15001, 15006]) {
    const before = tb.ztunnelLog('node1').length;
    const r = await tb.exec('client-node1', ['curl', '-sS', '--max-time', '3', `http://${z.ip}:${port}/`], {
      check: false,
    });
    t.not(r.code, 0, 'no answer');
    t.not(r.code, 28, 'closed at once, not hung');
    await waitUntil(() => tb.ztunnelLog('node1').length > before, 10_000);
    const lines = tb.ztunnelLog('node1').slice(before);
    t.equal(lines.length, 1);
    t.match(lines[0], {
      direction: port === 15001 ? 'outbound' : 'inbound-plaintext',
      dstFrom: 'local-address',
      originalDst: `${z.ip}:${port}`,
      result: 'error: no original destination',
    });
  }
});

t.test('HBONE needs a client certificate from the test CA', async (t) => {
  const r = await tb.exec(
    'client-node1',
    ['curl', '-sS', '-k', '--http2', '--max-time', '3', `https://${z.ip}:15008/`],
    { check: false },
  );
  t.not(r.code, 0, 'TLS without a client certificate is refused');
});

t.test('HBONE answers anything but CONNECT with 405', async (t) => {
  const pki = tb.info.pkiDir;
  const before = tb.ztunnelLog('node1').length;
  const r = await tb.exec(
    'client-node1',
    [
      'curl',
      '-sS',
      '-k',
      '--http2',
      '--max-time',
      '3',
      '--cert',
      join(pki, 'ztunnel.crt'),
      '--key',
      join(pki, 'ztunnel.key'),
      '-o',
      '/dev/null',
      '-w',
      '%{http_code} %{http_version}',
      `https://${z.ip}:15008/`,
    ],
    { check: false },
  );
  t.equal(r.stdout, '405 2', r.stderr);
  // The stand-in logs when the stream ends, which can be after curl got its answer.
  await waitUntil(() => tb.ztunnelLog('node1').length > before, 10_000);
  const line = tb.ztunnelLog('node1').slice(before)[0];
  t.match(line, { direction: 'inbound-hbone', result: /^error: bad request GET/ });
});
