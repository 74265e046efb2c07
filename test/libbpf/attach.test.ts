// libbpf-ts attachments on the real kernel, only to cgroups and netns this test makes:
// a connect4 program changes a real connect(); a tc program counts real packets (tcx and clsact);
// sockops/sk_msg/sk_lookup attach and detach; pinned links survive their fd.
import t from 'tap';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync, rmdirSync, existsSync, statSync } from 'node:fs';
import {
  BpfObject,
  BpfLink,
  withNetns,
  netnsCookie,
  currentNetnsCookie,
  ifIndex,
  linkInfoByFd,
} from '../../src/libbpf/index.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { fixtureObject, makeNetns, sh, u32, readU64 } from './fixture.ts';

const prefix = testPrefix();
const CGROUP_ROOT = '/sys/fs/cgroup/unified';
const basicPath = await fixtureObject('basic');
const pinDir = `/sys/fs/bpf/${prefix}`;
mkdirSync(pinDir, { recursive: true });
t.teardown(() => rmSync(pinDir, { recursive: true, force: true }));

const children: ChildProcess[] = [];
t.teardown(() => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
});

function makeCgroup(name: string): string {
  const path = `${CGROUP_ROOT}/${name}`;
  mkdirSync(path);
  return path;
}
function removeCgroup(path: string): void {
  // Its processes are gone by now (they exit on their own or were killed); retry briefly for the
  // kernel to notice.
  for (let i = 0; i < 50 && existsSync(path); i++) {
    try {
      rmdirSync(path);
    } catch {
      execFileSync('sleep', ['0.1']);
    }
  }
}

/** A TCP server in the netns on 127.0.0.1:port that greets every client with `banner`. */
async function startServer(ns: string, port: number, banner: string): Promise<void> {
  const code = `require('net').createServer(s=>{s.end(${JSON.stringify(banner)})}).listen(${port},'127.0.0.1',()=>console.log('ready'))`;
  const child = spawn('nsenter', ['--net=/run/netns/' + ns, process.execPath, '-e', code], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(child);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start in 10 s')), 10_000);
    child.stdout!.once('data', () => {
      clearTimeout(timer);
      resolve();
    });
    child.once('exit', (c) => reject(new Error(`server exited ${c}`)));
  });
}

/** connect() from a child placed in the cgroup and netns; resolves to what it read or its error code. */
function clientConnect(cgroup: string, ns: string, ip: string, port: number): string {
  const code = `const s=require('net').connect(${port},'${ip}');s.on('data',d=>{process.stdout.write(d.toString());process.exit(0)});s.on('error',e=>{process.stdout.write('ERR '+e.code);process.exit(0)});setTimeout(()=>{process.stdout.write('TIMEOUT');process.exit(0)},5000)`;
  // The shell moves itself into the cgroup before exec: the connect happens inside it.
  return execFileSync(
    'sh',
    [
      '-c',
      `echo $$ > ${cgroup}/cgroup.procs && exec nsenter --net=/run/netns/${ns} "$0" -e "$1"`,
      process.execPath,
      code,
    ],
    {
      encoding: 'utf8',
      timeout: 15_000,
    },
  );
}

t.test('cgroup connect4 rewrites a real connect() of a process in the cgroup', async (t) => {
  const ns = makeNetns(`${prefix}c`);
  t.teardown(ns.remove);
  const cg = makeCgroup(`${prefix}-cg`);
  t.teardown(() => removeCgroup(cg));
  const port = 20000 + Math.floor(Math.random() * 20000);
  await startServer(ns.name, port, `hello-${prefix}`);

  t.match(clientConnect(cg, ns.name, '198.18.0.99', 7), /^ERR /, 'without the program the connect fails');

  using obj = BpfObject.open(basicPath);
  obj.load();
  const rule = Buffer.alloc(16);
  rule.set([198, 18, 0, 99], 0); // network order in memory
  rule.writeUInt16BE(7, 4);
  rule.set([127, 0, 0, 1], 8);
  rule.writeUInt16BE(port, 12);
  obj.map('rule').update(u32(0), rule);
  const link = obj.program('rewrite_connect4').attachCgroup(cg);
  const info = link.info();
  t.equal(info.typeName, 'cgroup');
  t.equal(info.attachTypeName, 'cgroup_inet4_connect');
  t.equal(info.cgroupId, BigInt(statSync(cg).ino), 'link info names our cgroup');
  t.equal(info.progId, obj.program('rewrite_connect4').id);

  t.equal(
    clientConnect(cg, ns.name, '198.18.0.99', 7),
    `hello-${prefix}`,
    'the connect landed on the rewritten address',
  );
  t.equal(readU64(obj.map('counters').lookup(u32(0))!), 1n, 'the program counted one rewrite');
  t.match(clientConnect(cg, ns.name, '198.18.0.98', 7), /^ERR /, 'other destinations pass untouched');

  // Pinned links outlive their fd; removing the pin (and every fd) detaches.
  const pin = `${pinDir}/connect4`;
  link.pin(pin);
  link.close();
  t.equal(clientConnect(cg, ns.name, '198.18.0.99', 7), `hello-${prefix}`, 'still attached through the pin');
  const again = BpfLink.openPinned(pin);
  t.equal(again.info().cgroupId, BigInt(statSync(cg).ino));
  again.unpin();
  again.close();
  t.match(clientConnect(cg, ns.name, '198.18.0.99', 7), /^ERR /, 'unpinned and closed: detached');
});

/** Two netns joined by a veth pair: a (198.18.1.1) <-> b (198.18.1.2). */
function vethPair(teardown: (fn: () => void) => void, tag: string): { a: string; b: string; ifb: string } {
  const a = makeNetns(`${prefix}${tag}a`);
  const b = makeNetns(`${prefix}${tag}b`);
  teardown(() => {
    a.remove();
    b.remove();
  });
  const ifa = `${prefix}${tag}a`;
  const ifb = `${prefix}${tag}b`;
  sh('ip', ['-n', a.name, 'link', 'add', ifa, 'type', 'veth', 'peer', 'name', ifb, 'netns', b.name]);
  sh('ip', ['-n', a.name, 'addr', 'add', '198.18.1.1/24', 'dev', ifa]);
  sh('ip', ['-n', b.name, 'addr', 'add', '198.18.1.2/24', 'dev', ifb]);
  sh('ip', ['-n', a.name, 'link', 'set', ifa, 'up']);
  sh('ip', ['-n', b.name, 'link', 'set', ifb, 'up']);
  return { a: a.name, b: b.name, ifb };
}

/** Send `count` UDP datagrams from netns a to b's address (bounded: count packets, then exit). */
function sendUdp(fromNs: string, count: number): void {
  const code = `const s=require('dgram').createSocket('udp4');let n=0;const go=()=>{if(n++>=${count}){s.close();return}s.send('x',9,'198.18.1.2',()=>setTimeout(go,20))};go()`;
  execFileSync('nsenter', ['--net=/run/netns/' + fromNs, process.execPath, '-e', code], {
    stdio: 'ignore',
    timeout: 15_000,
  });
}

for (const mode of ['tcx', 'clsact'] as const) {
  t.test(`tc program counts real packets (${mode})`, async (t) => {
    const { a, b, ifb } = vethPair((fn) => t.teardown(fn), mode === 'tcx' ? 'x' : 'k');
    using obj = BpfObject.open(basicPath);
    obj.load();
    const counters = obj.map('counters');
    const att = obj.program('count_packets').attachTc(ifb, 'ingress', { mode, netns: `/run/netns/${b}` });
    t.teardown(() => att.detach());
    t.equal(att.mode, mode);
    t.equal(
      att.ifindex,
      withNetns(`/run/netns/${b}`, () => ifIndex(ifb)),
    );
    if (mode === 'tcx') {
      const info = att.link!.info();
      t.equal(info.typeName, 'tcx');
      t.equal(info.attachTypeName, 'tcx_ingress');
      t.equal(info.ifindex, att.ifindex);
    } else {
      t.match(
        sh('nsenter', ['--net=/run/netns/' + b, 'tc', 'filter', 'show', 'dev', ifb, 'ingress']),
        /count_packets/,
        'tc sees our filter',
      );
    }
    sendUdp(a, 5);
    const ipv4 = readU64(counters.lookup(u32(2))!);
    t.ok(ipv4 >= 5n, `saw at least the 5 datagrams (${ipv4} IPv4 packets)`);
    t.ok(readU64(counters.lookup(u32(1))!) >= ipv4, 'all packets >= IPv4 packets');
    att.detach();
    if (mode === 'clsact') {
      t.notMatch(
        sh('nsenter', ['--net=/run/netns/' + b, 'tc', 'filter', 'show', 'dev', ifb, 'ingress']),
        /count_packets/,
        'our filter is gone',
      );
    }
    const before = readU64(counters.lookup(u32(2))!);
    sendUdp(a, 2);
    t.equal(readU64(counters.lookup(u32(2))!), before, 'detached: nothing counted any more');
  });
}

t.test('sockops link on a cgroup, sk_msg on a sockhash, sk_lookup on a netns', async (t) => {
  const cg = makeCgroup(`${prefix}-so`);
  t.teardown(() => removeCgroup(cg));
  const ns = makeNetns(`${prefix}l`);
  t.teardown(ns.remove);
  using obj = BpfObject.open(basicPath);
  obj.load();
  using sockops = obj.program('sockops_noop').attachSockops(cg);
  t.equal(sockops.info().attachTypeName, 'cgroup_sock_ops');
  const skmsg = obj.program('skmsg_pass').attachSkMsg(obj.map('socks'));
  const shown = JSON.parse(sh('bpftool', ['prog', 'show', 'id', String(obj.program('skmsg_pass').id), '-j'])) as {
    id: number;
  };
  t.equal(shown.id, obj.program('skmsg_pass').id);
  skmsg.detach();
  skmsg.detach();
  t.pass('sk_msg detach is idempotent');
  using lookup = obj.program('sklookup_pass').attachNetns(ns.path);
  const info = linkInfoByFd(lookup.fd);
  t.equal(info.typeName, 'netns');
  t.equal(info.attachTypeName, 'sk_lookup');
  t.equal(BigInt(info.netnsIno ?? 0), BigInt(statSync(ns.path).ino), 'attached to our netns');
});

t.test('netns cookies: per namespace, stable, and withNetns restores the thread', async (t) => {
  const ns = makeNetns(`${prefix}n`);
  t.teardown(ns.remove);
  const here = currentNetnsCookie();
  const there = netnsCookie(ns.path);
  t.not(there, here, 'a new netns has its own cookie');
  t.equal(netnsCookie(ns.path), there, 'stable');
  t.equal(currentNetnsCookie(), here, 'back in our own netns afterwards');
  t.throws(() => withNetns('/run/netns/nonexistent-' + prefix, () => 1), /cannot open the network namespace/);
  t.throws(() => withNetns(ns.path, () => Promise.resolve(1)), /only synchronous calls/);
  t.equal(currentNetnsCookie(), here, 'still home after a refused async fn');
});
