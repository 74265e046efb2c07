// SPDX-License-Identifier: Apache-2.0
/*
 * ambpf-cni: the chained CNI plugin of ambpf. It decides nothing: it relays the runtime's invocation
 * (the CNI_* environment and the config on stdin) to the node agent (`ambpf run --cni-socket PATH`)
 * over a unix socket, and writes back the agent's stdout bytes and exit code. Only VERSION is
 * answered here, and the "agent not reachable" error (or, with `failOpen: true`, prevResult).
 *
 * Built static with no dependency (the DaemonSet copies it into the host's CNI bin dir).
 * Wire format (docs/cni.md):
 *   request:  one JSON object, then the plugin shuts down its write side:
 *             {"v":1,"env":{"CNI_COMMAND":"ADD",...},"stdin":"<the config, as a JSON string>"}
 *   response: "<exit code in decimal>\n" followed by the bytes for stdout, then the agent closes.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET	  "/var/run/ambpf/cni.sock"
/* The runtime hands a config of a few KiB; anything near this bound is not a CNI config. */
#define MAX_STDIN	  (1 << 20)
#define MAX_RESPONSE	  (4 << 20)
/* The agent answers within its own ADD timeout (10 s by default); this bounds a hung agent. */
#define AGENT_DEADLINE_MS 120000

/* CNI spec 1.0.0 error codes. */
#define CNI_ERR_DECODE	    6
#define CNI_ERR_TRY_AGAIN   11
#define CNI_ERR_INVALID_ENV 4

struct buf {
	char *p;
	size_t len, cap;
};

static void buf_put(struct buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (b->len + n + 1 > cap)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			fputs("ambpf-cni: out of memory\n", stderr);
			exit(2);
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void buf_str(struct buf *b, const char *s)
{
	buf_put(b, s, strlen(s));
}

/* Appends s as a JSON string literal (quotes included). */
static void buf_json(struct buf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	buf_put(b, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\') {
			char e[2] = {'\\', (char)c};
			buf_put(b, e, 2);
		} else if (c < 0x20) {
			char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
			buf_put(b, e, 6);
		} else {
			buf_put(b, (const char *)&c, 1);
		}
	}
	buf_put(b, "\"", 1);
}

/* ---- just enough JSON to read three top-level keys of the config ---- */

static const char *skip_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* Returns the end of the JSON value starting at p, or NULL if it is malformed. */
static const char *skip_value(const char *p, const char *end, int depth)
{
	if (depth > 64)
		return NULL;
	p = skip_ws(p, end);
	if (p >= end)
		return NULL;
	if (*p == '"') {
		for (p++; p < end; p++) {
			if (*p == '\\')
				p++;
			else if (*p == '"')
				return p + 1;
		}
		return NULL;
	}
	if (*p == '{' || *p == '[') {
		char close = *p == '{' ? '}' : ']';
		p = skip_ws(p + 1, end);
		if (p < end && *p == close)
			return p + 1;
		for (;;) {
			if (close == '}') {
				p = skip_value(p, end, depth + 1); /* the key */
				if (!p)
					return NULL;
				p = skip_ws(p, end);
				if (p >= end || *p != ':')
					return NULL;
				p++;
			}
			p = skip_value(p, end, depth + 1);
			if (!p)
				return NULL;
			p = skip_ws(p, end);
			if (p < end && *p == ',') {
				p++;
				continue;
			}
			if (p < end && *p == close)
				return p + 1;
			return NULL;
		}
	}
	while (p < end && (strchr("-+.eE", *p) || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z')))
		p++;
	return p;
}

/* The raw text of a top-level key's value in the object doc, or NULL (len set). */
static const char *json_get(const char *doc, size_t n, const char *key, size_t *len)
{
	const char *p = skip_ws(doc, doc + n), *end = doc + n;
	size_t klen = strlen(key);
	if (p >= end || *p != '{')
		return NULL;
	p = skip_ws(p + 1, end);
	while (p < end && *p == '"') {
		const char *k = p + 1, *kend = skip_value(p, end, 0);
		if (!kend)
			return NULL;
		p = skip_ws(kend, end);
		if (p >= end || *p != ':')
			return NULL;
		const char *v = skip_ws(p + 1, end), *vend = skip_value(v, end, 0);
		if (!vend)
			return NULL;
		if ((size_t)(kend - 1 - k) == klen && memcmp(k, key, klen) == 0) {
			*len = (size_t)(vend - v);
			return v;
		}
		p = skip_ws(vend, end);
		if (p < end && *p == ',')
			p = skip_ws(p + 1, end);
	}
	return NULL;
}

/* A top-level string value without escapes (paths, versions), copied into out; 0 if absent. */
static int json_get_str(const char *doc, size_t n, const char *key, char *out, size_t outlen)
{
	size_t len;
	const char *v = json_get(doc, n, key, &len);
	if (!v || len < 2 || v[0] != '"' || len - 2 >= outlen || memchr(v + 1, '\\', len - 2))
		return 0;
	memcpy(out, v + 1, len - 2);
	out[len - 2] = '\0';
	return 1;
}

/* ---- outputs ---- */

static const char *cni_version = "1.0.0";

static int cni_error(int code, const char *msg, const char *fmt, ...)
{
	char details[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(details, sizeof(details), fmt, ap);
	va_end(ap);
	struct buf b = {0};
	buf_str(&b, "{\"cniVersion\":");
	buf_json(&b, cni_version, strlen(cni_version));
	char c[32];
	snprintf(c, sizeof(c), ",\"code\":%d,\"msg\":", code);
	buf_str(&b, c);
	buf_json(&b, msg, strlen(msg));
	buf_str(&b, ",\"details\":");
	buf_json(&b, details, strlen(details));
	buf_str(&b, "}\n");
	fwrite(b.p, 1, b.len, stdout);
	fprintf(stderr, "ambpf-cni: %s: %s\n", msg, details);
	return 1;
}

static int version_answer(void)
{
	printf("{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]}"
	       "\n");
	return 0;
}

/* failOpen: the previous plugin's result goes on unchanged (or an empty result of the config's version). */
static int pass_through(const char *conf, size_t n)
{
	size_t len;
	const char *prev = json_get(conf, n, "prevResult", &len);
	if (prev && len > 0 && *prev == '{') {
		fwrite(prev, 1, len, stdout);
		fputc('\n', stdout);
	} else {
		printf("{\"cniVersion\":\"%s\"}\n", cni_version);
	}
	return 0;
}

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Connects to the agent; -1 with errno set. */
static int agent_connect(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sa.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	/* A unix connect() blocks while the agent's backlog is full (its event loop stuck), and send()
	 * while its buffer is: bound both, or the container runtime hangs with us. */
	struct timeval tv = {.tv_sec = 10};
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Reads until EOF within the deadline; -1 with errno (ETIMEDOUT, EFBIG) on failure. */
static int read_all(int fd, struct buf *out, long deadline, size_t max)
{
	char chunk[65536];
	for (;;) {
		long left = deadline - now_ms();
		if (left <= 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		int r = poll(&pfd, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0)
			continue;
		ssize_t n = read(fd, chunk, sizeof(chunk));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0)
			return 0;
		if (out->len + (size_t)n > max) {
			errno = EFBIG;
			return -1;
		}
		buf_put(out, chunk, (size_t)n);
	}
}

static const char *const RELAYED_ENV[] = {
	"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH",
};

int main(void)
{
	struct buf conf = {0};
	buf_put(&conf, "", 0);
	const char *cmd = getenv("CNI_COMMAND");

	char chunk[65536];
	size_t n;
	while ((n = fread(chunk, 1, sizeof(chunk), stdin)) > 0) {
		if (conf.len + n > MAX_STDIN)
			return cni_error(CNI_ERR_DECODE, "config too large", "stdin is larger than %d bytes",
					 MAX_STDIN);
		buf_put(&conf, chunk, n);
	}

	/* VERSION comes with a config naming the runtime's version; the answer is the same for all. */
	if (cmd && strcmp(cmd, "VERSION") == 0)
		return version_answer();

	static char version[32];
	if (json_get_str(conf.p, conf.len, "cniVersion", version, sizeof(version)))
		cni_version = version;
	if (!cmd || !*cmd)
		return cni_error(CNI_ERR_INVALID_ENV, "CNI_COMMAND is not set",
				 "ambpf-cni is a CNI plugin: run it from a container runtime");
	/* Not even an object: no socketPath to find the agent by, so this is answered here (the agent
	 * answers every other malformed config itself). */
	const char *first = skip_ws(conf.p, conf.p + conf.len);
	if (first >= conf.p + conf.len || *first != '{')
		return cni_error(CNI_ERR_DECODE, "the network configuration on stdin is not a JSON object",
				 "%zu bytes on stdin", conf.len);

	char sock[108];
	if (!json_get_str(conf.p, conf.len, "socketPath", sock, sizeof(sock)) &&
	    !json_get_str(conf.p, conf.len, "agentSocket", sock, sizeof(sock)))
		strcpy(sock, DEFAULT_SOCKET);
	size_t len;
	const char *fo = json_get(conf.p, conf.len, "failOpen", &len);
	int fail_open = fo && len == 4 && memcmp(fo, "true", 4) == 0;

	struct buf req = {0};
	buf_str(&req, "{\"v\":1,\"env\":{");
	for (size_t i = 0; i < sizeof(RELAYED_ENV) / sizeof(RELAYED_ENV[0]); i++) {
		const char *v = getenv(RELAYED_ENV[i]);
		if (!v)
			continue;
		if (req.p[req.len - 1] != '{')
			buf_str(&req, ",");
		buf_json(&req, RELAYED_ENV[i], strlen(RELAYED_ENV[i]));
		buf_str(&req, ":");
		buf_json(&req, v, strlen(v));
	}
	buf_str(&req, "},\"stdin\":");
	buf_json(&req, conf.p, conf.len);
	buf_str(&req, "}\n");

	int fd = agent_connect(sock);
	const char *failed = NULL;
	struct buf resp = {0};
	if (fd < 0)
		failed = "connect to";
	else if (write_all(fd, req.p, req.len) < 0 || shutdown(fd, SHUT_WR) < 0)
		failed = "send to";
	else if (read_all(fd, &resp, now_ms() + AGENT_DEADLINE_MS, MAX_RESPONSE) < 0)
		failed = "read from";
	int err = errno;
	if (fd >= 0)
		close(fd);

	char *nl = resp.len ? memchr(resp.p, '\n', resp.len) : NULL;
	if (!failed && !nl) {
		failed = "parse the answer of";
		err = EPROTO;
	}
	if (failed) {
		/* A pod torn down while the agent is away: the agent drops what it kept of the pod when it
		 * finds the netns gone at its restart, so DEL succeeds rather than blocking the removal. */
		/* DEL never blocks a pod's teardown; STATUS and GC (CNI 1.1) must not make the whole node
		 * NotReady because the agent is restarting: only ADD fails closed. */
		if (strcmp(cmd, "DEL") == 0 || strcmp(cmd, "STATUS") == 0 || strcmp(cmd, "GC") == 0)
			return 0;
		if (fail_open && strcmp(cmd, "ADD") == 0) {
			fprintf(stderr,
				"ambpf-cni: cannot %s the ambpf agent at %s (%s); failOpen: the pod starts outside the "
				"mesh\n",
				failed, sock, strerror(err));
			return pass_through(conf.p, conf.len);
		}
		return cni_error(CNI_ERR_TRY_AGAIN, "the ambpf node agent is not reachable; retry later",
				 "cannot %s the agent at %s: %s", failed, sock, strerror(err));
	}
	*nl = '\0';
	char *endp;
	long code = strtol(resp.p, &endp, 10);
	if (endp == resp.p || *endp != '\0' || code < 0 || code > 255)
		return cni_error(CNI_ERR_TRY_AGAIN, "the ambpf node agent answered garbage", "status line '%.32s'",
				 resp.p);
	size_t body = (size_t)(nl + 1 - resp.p);
	fwrite(resp.p + body, 1, resp.len - body, stdout);
	fflush(stdout);
	return (int)code;
}
