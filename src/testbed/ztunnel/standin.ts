// The ztunnel stand-in: keeps ztunnel's L4 contract so redirection (iptables or eBPF) is tested
// against what real ztunnel expects.
//   15001 outbound: original dst ONLY via getsockopt(SO_ORIGINAL_DST), else the accepted socket's
//         local address (TPROXY/sk_assign); to a mesh pod -> HBONE (HTTP/2 CONNECT over mTLS, ALPN h2)
//         to <orig ip>:15008 with :authority = orig dst; to anything else -> plain TCP passthrough.
//   15008 inbound HBONE: terminate TLS + CONNECT, connect to :authority.
//   15006 inbound plaintext: connect to the original dst.
// Every socket it opens carries SO_MARK 0x539, set with libc setsockopt on a socket made by libc
// socket() BEFORE connect (then wrapped by net.Socket({fd})), so the very first SYN is marked.
// Listeners are made the same way so IP_TRANSPARENT is set before bind. One JSON line per connection.
// Run: node standin.ts '<StandInConfig JSON>'
import net from 'node:net';
import tls from 'node:tls';
import http2 from 'node:http2';
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import { listenFd, originalDst, socketFd, tcpSocket, type SockAddr } from './sockopt.ts';
import { relay } from './relay.ts';
import { pkiPaths, ZTUNNEL_SPIFFE_ID } from './pki.ts';
import { PORT_HBONE, PORT_INBOUND_PLAINTEXT, PORT_OUTBOUND, ZTUNNEL_MARK, type StandInConfig } from './config.ts';
import type { ZtunnelLogEntry } from '../types.ts';

const cfg = JSON.parse(process.argv[2] ?? '{}') as StandInConfig;
const pki = pkiPaths(cfg.pkiDir);
const tlsMaterial = { ca: readFileSync(pki.caCert), cert: readFileSync(pki.cert), key: readFileSync(pki.key) };
const mesh = new Set(cfg.meshIps);
const localMesh = new Set(cfg.localMeshIps);

const unmap = (ip: string | undefined): string => (ip ?? '').replace(/^::ffff:/, '');
const fmt = (a: SockAddr): string => (a.ip.includes(':') ? `[${a.ip}]:${a.port}` : `${a.ip}:${a.port}`);

function logLine(e: Omit<ZtunnelLogEntry, 'time' | 'node' | 'where'>): void {
  const line: ZtunnelLogEntry = { time: new Date().toISOString(), node: cfg.node, where: cfg.where, ...e };
  appendFileSync(cfg.logPath, JSON.stringify(line) + '\n');
}

/** The original destination the way ztunnel learns it. */
function learnOriginalDst(s: net.Socket): { dst: SockAddr; from: string } {
  const fd = socketFd(s);
  const local = unmap(s.localAddress);
  const viaSockopt = fd === undefined ? undefined : originalDst(fd, !local.includes(':'));
  if (viaSockopt) return { dst: viaSockopt, from: 'SO_ORIGINAL_DST' };
  return { dst: { ip: local, port: s.localPort ?? 0 }, from: 'local-address' };
}

/** A TCP connection with SO_MARK 0x539 from its first packet on. */
function connectMarked(dst: SockAddr): Promise<net.Socket> {
  const fd = tcpSocket(dst.ip.includes(':') ? 6 : 4, ZTUNNEL_MARK);
  const s = new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: true });
  return new Promise((resolve, reject) => {
    s.once('error', reject);
    s.connect(dst.port, dst.ip, () => {
      s.off('error', reject);
      resolve(s);
    });
  });
}

function checkPeer(_host: string, cert: tls.PeerCertificate): Error | undefined {
  return (cert.subjectaltname ?? '').includes(`URI:${ZTUNNEL_SPIFFE_ID}`) ? undefined : new Error(`peer is not ${ZTUNNEL_SPIFFE_ID}`);
}

/** HTTP/2 CONNECT over mTLS to <dst ip>:15008; resolves to the tunnel stream once the peer answered 200. */
async function openHbone(dst: SockAddr): Promise<{ stream: http2.ClientHttp2Stream; session: http2.ClientHttp2Session }> {
  const raw = await connectMarked({ ip: localMesh.has(dst.ip) ? '127.0.0.1' : dst.ip, port: PORT_HBONE });
  const secure = tls.connect({ socket: raw, ...tlsMaterial, ALPNProtocols: ['h2'], servername: 'ztunnel.istio-system', checkServerIdentity: checkPeer });
  const session = http2.connect(`https://${fmt({ ip: dst.ip, port: PORT_HBONE })}`, { createConnection: () => secure });
  session.on('error', () => { /* reported through the stream */ });
  const stream = session.request({ ':method': 'CONNECT', ':authority': fmt(dst) });
  await new Promise<void>((resolve, reject) => {
    stream.once('error', reject);
    stream.once('close', () => reject(new Error(`HBONE stream closed (rst code ${stream.rstCode ?? '?'})`)));
    stream.once('response', (h) => {
      const status = Number(h[':status']);
      if (status === 200) resolve();
      else reject(new Error(`HBONE CONNECT answered ${status}`));
    });
  });
  stream.removeAllListeners('close');
  return { stream, session };
}

function errText(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? (e instanceof Error ? e.message : String(e));
}

type LogBase = Pick<ZtunnelLogEntry, 'direction' | 'source' | 'originalDst' | 'dstFrom'>;

/**
 * A client that connected straight to a ztunnel port (no redirect, so no SO_ORIGINAL_DST and the local
 * address is ztunnel's own): there is nowhere to forward to, and forwarding would loop into ourselves.
 */
function noOriginalDst(s: net.Socket, base: LogBase): boolean {
  const port = s.localPort ?? 0;
  if (base.dstFrom !== 'local-address' || ![PORT_OUTBOUND, PORT_INBOUND_PLAINTEXT, PORT_HBONE].includes(port)) return false;
  logLine({ ...base, upstream: '', upstreamProtocol: '', bytesIn: 0, bytesOut: 0, result: 'error: no original destination' });
  s.destroy();
  return true;
}

async function onOutbound(s: net.Socket): Promise<void> {
  const source = fmt({ ip: unmap(s.remoteAddress), port: s.remotePort ?? 0 });
  const { dst, from } = learnOriginalDst(s);
  s.pause();
  const base = { direction: 'outbound' as const, source, originalDst: fmt(dst), dstFrom: from };
  if (noOriginalDst(s, base)) return;
  const hbone = mesh.has(dst.ip);
  const upstream = hbone ? fmt({ ip: localMesh.has(dst.ip) ? '127.0.0.1' : dst.ip, port: PORT_HBONE }) : fmt(dst);
  try {
    if (hbone) {
      const { stream, session } = await openHbone(dst);
      const r = await relay(s, stream);
      session.close();
      logLine({ ...base, upstream, upstreamProtocol: 'hbone', bytesIn: r.bytesIn, bytesOut: r.bytesOut, result: r.error ? `error: ${r.error}` : 'ok' });
    } else {
      const up = await connectMarked(dst);
      const r = await relay(s, up);
      logLine({ ...base, upstream, upstreamProtocol: 'tcp', bytesIn: r.bytesIn, bytesOut: r.bytesOut, result: r.error ? `error: ${r.error}` : 'ok' });
    }
  } catch (e) {
    logLine({ ...base, upstream, upstreamProtocol: hbone ? 'hbone' : 'tcp', bytesIn: 0, bytesOut: 0, result: `error: ${errText(e)}` });
    s.destroy();
  }
}

async function onPlaintextInbound(s: net.Socket): Promise<void> {
  const source = fmt({ ip: unmap(s.remoteAddress), port: s.remotePort ?? 0 });
  const { dst, from } = learnOriginalDst(s);
  s.pause();
  const base = { direction: 'inbound-plaintext' as const, source, originalDst: fmt(dst), dstFrom: from, upstream: fmt(dst), upstreamProtocol: 'tcp' as const };
  if (noOriginalDst(s, base)) return;
  try {
    const up = await connectMarked(dst);
    const r = await relay(s, up);
    logLine({ ...base, bytesIn: r.bytesIn, bytesOut: r.bytesOut, result: r.error ? `error: ${r.error}` : 'ok' });
  } catch (e) {
    logLine({ ...base, bytesIn: 0, bytesOut: 0, result: `error: ${errText(e)}` });
    s.destroy();
  }
}

function parseAuthority(a: string): SockAddr | undefined {
  const m = /^\[?([0-9a-fA-F:.]+?)\]?:(\d+)$/.exec(a);
  if (!m || m[1] === undefined || m[2] === undefined || net.isIP(m[1]) === 0) return undefined;
  return { ip: m[1], port: Number(m[2]) };
}

async function onHboneStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): Promise<void> {
  const sock = stream.session?.socket;
  const source = fmt({ ip: unmap(sock?.remoteAddress), port: sock?.remotePort ?? 0 });
  const authority = String(headers[':authority'] ?? '');
  const base = { direction: 'inbound-hbone' as const, source, originalDst: authority, dstFrom: 'authority', upstream: authority, upstreamProtocol: 'tcp' as const };
  const dst = parseAuthority(authority);
  if (headers[':method'] !== 'CONNECT' || !dst) {
    stream.respond({ ':status': headers[':method'] !== 'CONNECT' ? 405 : 400 }, { endStream: true });
    logLine({ ...base, bytesIn: 0, bytesOut: 0, result: `error: bad request ${String(headers[':method'])} ${authority}` });
    return;
  }
  try {
    const up = await connectMarked(dst);
    stream.respond({ ':status': 200 });
    const r = await relay(stream, up);
    logLine({ ...base, bytesIn: r.bytesIn, bytesOut: r.bytesOut, result: r.error ? `error: ${r.error}` : 'ok' });
  } catch (e) {
    if (!stream.headersSent) stream.respond({ ':status': 503 }, { endStream: true });
    logLine({ ...base, bytesIn: 0, bytesOut: 0, result: `error: ${errText(e)}` });
  }
}

function listen(server: net.Server, port: number): Promise<void> {
  const fd = listenFd(6, '::', port, { transparent: cfg.transparent });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ fd }, () => resolve());
  });
}

const outbound = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (s) => void onOutbound(s));
const plaintext = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (s) => void onPlaintextInbound(s));
const hbone = http2.createSecureServer({ ...tlsMaterial, requestCert: true, rejectUnauthorized: true, ALPNProtocols: ['h2'], allowHTTP1: false });
hbone.on('stream', (stream, headers) => void onHboneStream(stream, headers));
hbone.on('secureConnection', (s: tls.TLSSocket) => {
  const err = checkPeer('', s.getPeerCertificate());
  if (err) s.destroy(err);
});
for (const srv of [outbound, plaintext]) srv.on('error', (e) => process.stderr.write(`stand-in listener error: ${e.message}\n`));

await listen(outbound, PORT_OUTBOUND);
await listen(plaintext, PORT_INBOUND_PLAINTEXT);
await listen(hbone, PORT_HBONE);
writeFileSync(cfg.readyFile, `${process.pid}\n`);
process.stdout.write(`ztunnel stand-in ${cfg.where} ready on ${PORT_OUTBOUND}/${PORT_INBOUND_PLAINTEXT}/${PORT_HBONE}\n`);
process.on('SIGTERM', () => process.exit(0));
// One broken connection (a peer resetting mid-handshake, an h2 protocol error) must not take the whole
// node's ztunnel down in the middle of a benchmark: say it in the .out file and keep serving.
process.on('uncaughtException', (e) => process.stderr.write(`stand-in ${cfg.where}: uncaught ${e.stack ?? String(e)}\n`));
hbone.on('sessionError', () => { /* the session's streams report their own errors */ });
