/* RESULT lines on stdout: the only interface between the guest and the host-side report.
 * One event per line, tab-separated, tabs/newlines in details flattened, so a serial console that
 * interleaves kernel messages still parses line by line. */
#ifndef AMBPF_CHECKER_REPORT_H
#define AMBPF_CHECKER_REPORT_H

/* RESULT <object> <program> <stage> <status> <detail> */
void report(const char *object, const char *program, const char *stage, const char *status, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

/* VLOG <object> <program> <line>: the last `max_lines` non-empty lines of a verifier/libbpf log. */
void report_log_tail(const char *object, const char *program, const char *log, int max_lines);

/* libbpf's own messages (relocation failures, "unknown func" before the verifier runs) are kept in a
 * ring so a failed load can show them next to the verifier log. */
void libbpf_log_capture_install(void);
void libbpf_log_reset(void);
const char *libbpf_log_text(void);

#endif /* AMBPF_CHECKER_REPORT_H */
