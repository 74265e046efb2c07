#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <bpf/libbpf.h>
#include "report.h"

static void put_clean(const char *s)
{
	for (; *s; s++)
		putchar(*s == '\t' || *s == '\n' || *s == '\r' ? ' ' : *s);
}

void report(const char *object, const char *program, const char *stage, const char *status, const char *fmt, ...)
{
	char detail[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	printf("RESULT\t");
	put_clean(object);
	putchar('\t');
	put_clean(program);
	printf("\t%s\t%s\t", stage, status);
	put_clean(detail);
	putchar('\n');
	fflush(stdout);
}

void report_log_tail(const char *object, const char *program, const char *log, int max_lines)
{
	const char *starts[64];
	int n = 0;
	const char *p = log;

	if (max_lines > 64)
		max_lines = 64;
	/* Remember where the last max_lines non-empty lines start. */
	while (*p) {
		const char *eol = strchr(p, '\n');
		size_t len = eol ? (size_t)(eol - p) : strlen(p);

		if (len > 0)
			starts[n++ % max_lines] = p;
		p += len + (eol ? 1 : 0);
	}
	for (int i = n > max_lines ? n - max_lines : 0; i < n; i++) {
		const char *line = starts[i % max_lines];
		size_t len = strcspn(line, "\n");

		printf("VLOG\t");
		put_clean(object);
		putchar('\t');
		put_clean(program);
		printf("\t%.*s\n", (int)(len > 300 ? 300 : len), line);
	}
	fflush(stdout);
}

static char libbpf_log[8192];
static size_t libbpf_log_len;

static int capture(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	char line[1024];
	int n;

	if (level == LIBBPF_DEBUG)
		return 0;
	n = vsnprintf(line, sizeof(line), fmt, ap);
	if (n <= 0)
		return n;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	/* Keep the newest text: drop the oldest half when full. */
	if (libbpf_log_len + (size_t)n + 1 > sizeof(libbpf_log)) {
		size_t keep = libbpf_log_len / 2;

		memmove(libbpf_log, libbpf_log + libbpf_log_len - keep, keep);
		libbpf_log_len = keep;
	}
	if (libbpf_log_len + (size_t)n + 1 <= sizeof(libbpf_log)) {
		memcpy(libbpf_log + libbpf_log_len, line, (size_t)n);
		libbpf_log_len += (size_t)n;
		libbpf_log[libbpf_log_len] = '\0';
	}
	return n;
}

void libbpf_log_capture_install(void)
{
	libbpf_set_print(capture);
}

void libbpf_log_reset(void)
{
	libbpf_log_len = 0;
	libbpf_log[0] = '\0';
}

const char *libbpf_log_text(void)
{
	return libbpf_log;
}
