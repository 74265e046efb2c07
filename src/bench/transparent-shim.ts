// nginx and iperf3 cannot make a transparent listener, but Istio's node-topology iptables path
// delivers with TPROXY, which only hands packets to listeners with IP_TRANSPARENT (real ztunnel sets
// it). So every sink runs with a tiny LD_PRELOAD library that sets IP_TRANSPARENT in listen(): the
// same sink then serves every path (a transparent listener costs nothing on the others).
// ambpf's inbound steering copies ztunnel's 15006 AND 15008 listeners out of ONE process; iperf3
// listens on one port, so AMBPF_BENCH_EXTRA_LISTEN=<port> makes the library open one more idle
// listener in the same process, as ztunnel's process holds both. And iperf3 closes its listener
// after every test and makes a new one, which would drop out of that map: the library keeps the
// first listener of each port alive (a dup) and hands it back when iperf3 binds the port again, so
// the listener lives as long as the server, like ztunnel's.
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../testbed/run.ts';
import { BenchError } from './errors.ts';

const SOURCE = String.raw`
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
#endif
#ifndef IPV6_TRANSPARENT
#define IPV6_TRANSPARENT 75
#endif
static int (*real_listen)(int, int);
static int (*real_bind)(int, const struct sockaddr *, socklen_t);
static int extra_done;
/* First listener per port, kept open by a dup so the socket outlives the server's close(). */
static struct { int port, fd; } kept[16];
static int nkept;

static void transparent(int fd) {
  int one = 1;
  setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof one);
  setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof one);
}

static int port_of(const struct sockaddr *a) {
  if (a->sa_family == AF_INET) return ntohs(((const struct sockaddr_in *)a)->sin_port);
  if (a->sa_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
  return -1;
}

static int local_port(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  return getsockname(fd, (struct sockaddr *)&ss, &len) == 0 ? port_of((struct sockaddr *)&ss) : -1;
}

/* iperf3 closes its listener after every test and binds a new one: hand it the kept socket instead. */
int bind(int fd, const struct sockaddr *addr, socklen_t len) {
  if (!real_bind) real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
  int port = port_of(addr);
  for (int i = 0; i < nkept; i++)
    if (kept[i].port == port && port > 0) return dup2(kept[i].fd, fd) < 0 ? -1 : 0;
  return real_bind(fd, addr, len);
}

int listen(int fd, int backlog) {
  if (!real_listen) real_listen = (int (*)(int, int))dlsym(RTLD_NEXT, "listen");
  if (!real_bind) real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
  transparent(fd);
  const char *extra = getenv("AMBPF_BENCH_EXTRA_LISTEN");
  if (extra && !extra_done) {
    extra_done = 1;
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(extra));
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    transparent(s);
    if (s >= 0 && real_bind(s, (struct sockaddr *)&a, sizeof a) == 0) real_listen(s, 128);
  }
  int rc = real_listen(fd, backlog);
  int port = local_port(fd), known = 0;
  for (int i = 0; i < nkept; i++) known |= kept[i].port == port;
  if (rc == 0 && port > 0 && !known && nkept < 16) {
    kept[nkept].port = port;
    kept[nkept].fd = dup(fd);
    nkept++;
  }
  return rc;
}
`;

/** Builds the library into `dir` (once) and returns its path. */
export async function buildTransparentShim(dir: string): Promise<string> {
  const so = join(dir, 'ambpf-bench-transparent-v2.so');
  if (existsSync(so)) return so;
  mkdirSync(dir, { recursive: true });
  const src = join(dir, 'ambpf-bench-transparent.c');
  writeFileSync(src, SOURCE);
  const r = await run(['cc', '-shared', '-fPIC', '-O2', '-o', so, src, '-ldl'], { check: false });
  if (r.code !== 0)
    throw new BenchError(`could not build the sinks' IP_TRANSPARENT preload library with cc: ${r.stderr.trim()}`);
  return so;
}
