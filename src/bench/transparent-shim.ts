// nginx and iperf3 cannot make a transparent listener, but Istio's node-topology iptables path
// delivers with TPROXY, which only hands packets to listeners with IP_TRANSPARENT (real ztunnel sets
// it). So every sink runs with a tiny LD_PRELOAD library that sets IP_TRANSPARENT in listen(): the
// same sink then serves every path (a transparent listener costs nothing on the others).
// ambpf's inbound steering copies ztunnel's 15006 AND 15008 listeners out of ONE process; iperf3
// listens on one port, so AMBPF_BENCH_EXTRA_LISTEN=<port> makes the library open one more idle
// listener in the same process, as ztunnel's process holds both.
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
#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
#endif
#ifndef IPV6_TRANSPARENT
#define IPV6_TRANSPARENT 75
#endif
static int (*real_listen)(int, int);
static int extra_done;

static void transparent(int fd) {
  int one = 1;
  setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof one);
  setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof one);
}

int listen(int fd, int backlog) {
  if (!real_listen) real_listen = (int (*)(int, int))dlsym(RTLD_NEXT, "listen");
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
    if (s >= 0 && bind(s, (struct sockaddr *)&a, sizeof a) == 0) real_listen(s, 128);
  }
  return real_listen(fd, backlog);
}
`;

/** Builds the library into `dir` (once) and returns its path. */
export async function buildTransparentShim(dir: string): Promise<string> {
  const so = join(dir, 'ambpf-bench-transparent.so');
  if (existsSync(so)) return so;
  mkdirSync(dir, { recursive: true });
  const src = join(dir, 'ambpf-bench-transparent.c');
  writeFileSync(src, SOURCE);
  const r = await run(['cc', '-shared', '-fPIC', '-O2', '-o', so, src, '-ldl'], { check: false });
  if (r.code !== 0) throw new BenchError(`could not build the sinks' IP_TRANSPARENT preload library with cc: ${r.stderr.trim()}`);
  return so;
}
