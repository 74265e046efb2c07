// `make demo` is the README's main command: it must work, show the path, and leave nothing behind.
import t from 'tap';
import { spawnSync, execFileSync } from 'node:child_process';

const ours = (): string[] =>
  execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.startsWith('ambtb'));

for (const mode of ['node', 'inpod'] as const) {
  t.test(`ambpf demo --mode ${mode} shows each request's path and removes everything`, async (t) => {
    const r = spawnSync('bin/ambpf', ['demo', '--mode', mode], {
      encoding: 'utf8',
      timeout: 120_000,
      env: { ...process.env, AMBPF_LOG_LEVEL: 'warn' },
    });
    t.equal(r.status, 0, r.stderr);
    const prefix = /testbed (ambtb\w+):/.exec(r.stdout)?.[1];
    t.ok(prefix, 'names its testbed');
    t.match(r.stdout, /iptables rules in the cluster: 0/);
    t.match(r.stdout, /same node, mesh -> mesh[^\n]*\n\s+response: 200/);
    t.match(r.stdout, /cross node, mesh -> mesh[^\n]*\n\s+response: 200/);
    t.match(
      r.stdout,
      /node1\s+outbound .*via SO_ORIGINAL_DST\) -> 198\.19\.2\.3:15008\s+\[ok\]/,
      'cross-node outbound: HBONE to the pod IP:15008',
    );
    t.match(
      r.stdout,
      /node2\s+inbound\s+HBONE .*:15008 \(:authority 198\.19\.2\.3:8080\)/,
      'terminated at the other node',
    );
    t.match(
      r.stdout,
      /inbound .*:15006 \(orig dst 198\.19\.1\.3:8080 via local-address\)/,
      'plaintext inbound kept the original destination',
    );
    t.match(r.stdout, /counters: .*connect4_redirected\+1/);
    if (mode === 'inpod') {
      t.match(
        r.stdout,
        /app2-node1 +mesh +-> 198\.19\.2\.3  ztunnel's DNS proxy[^\n]*\n\s+node1 +counters: [^\n]*dns_redirected\+\d[^\n]*dns_restored\+\d/,
        "a mesh pod's lookup took ztunnel's path",
      );
      t.match(r.stdout, /client-node1 +no mesh +-> 198\.18\.99\.99/, 'a pod outside the mesh asked the resolver');
      const v6Out =
        /node1\s+outbound\s+\[fd00:a3bf:1:1::4\]:\d+ -> .*via IP6T_SO_ORIGINAL_DST\) -> \[fd00:a3bf:1:2::3\]:15008\s+\[ok\]/;
      t.match(
        r.stdout,
        v6Out,
        "over IPv6: from the pod's IPv6 address, IP6T_SO_ORIGINAL_DST, HBONE to the pod's IPv6 address",
      );
      t.match(r.stdout, /counters: .*connect6_redirected\+1/);
    }
    t.match(
      r.stdout,
      /ambpf pods on node1:[\s\S]*mesh\/app1-node1[\s\S]*mesh\/app2-node1/,
      "ambpf pods names the demo's mesh pods",
    );
    if (mode === 'inpod' && !r.stdout.includes('the CNI step is skipped')) {
      t.match(
        r.stdout,
        /ztunnel resumed\n.*ztunnel acked the Add[^\n]*\n.*ADD returned prevResult/,
        'the pod made through the CNI chain is held until ztunnel acked',
      );
      t.match(r.stdout, /the first connection went through ztunnel: 198\.19\.200\.\d+:\d+ -> ztunnel:15001/);
    }
    t.notOk(
      ours().some((n) => prefix && n.startsWith(prefix)),
      'no netns of the demo left',
    );
  });
}
