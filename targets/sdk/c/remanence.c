/*
 * remanence C SDK: the protocol (see remanence.h and targets/PROTOCOL.md).
 *
 * fd 3 carries both raw bytes (canary, secret) and ASCII control lines, so
 * nothing here ever reads fd 3 through stdio or any other buffering reader:
 * raw bytes are read with an exact-length read() loop straight into their
 * final storage, and control lines are read one byte at a time, never past
 * the '\n'.  Nothing here ever prints, logs or echoes bytes read from fd 3
 * other than the fixed control words.
 */
#define _GNU_SOURCE
#include "remanence.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define REM_MAX_SCENARIOS 64
#define REM_CANARY_MAX (1u << 20)
#define REM_LABEL_MAX 64
#define REM_LINE_MAX 512

static int started;            /* rem_start() has run */
static size_t secret_len;      /* REMANENCE_SECRET_LEN */
static size_t secret_consumed; /* secret bytes read so far by the program */

/* The canary: reachable through a volatile pointer and never freed or wiped,
 * so it stays in memory until exit (the positive control). */
static unsigned char *volatile canary_keep;
/* Where rem_use() leaves its checksum, so the reads cannot be dropped. */
static volatile unsigned use_sink;

/* --------------------------------------------------------------- channel */

static void channel_closed(void) __attribute__((noreturn));
static void channel_closed(void)
{
    fprintf(stderr, "%s: control channel closed\n",
            program_invocation_short_name);
    exit(REM_EXIT_CHANNEL_CLOSED);
}

static void send_all(const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(REM_CONTROL_FD, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            channel_closed(); /* EPIPE, ECONNRESET, EBADF, ... */
        }
        p += w;
        len -= (size_t)w;
    }
}

/* Send one line: prefix, then the formatted text with any control
 * character replaced, then '\n'. */
static void send_linev(const char *prefix, const char *fmt, va_list ap)
{
    char line[REM_LINE_MAX];
    size_t plen = strlen(prefix);
    int r;

    memcpy(line, prefix, plen);
    r = vsnprintf(line + plen, sizeof line - plen - 1, fmt, ap);
    if (r < 0)
        r = 0;
    if ((size_t)r > sizeof line - plen - 2)
        r = (int)(sizeof line - plen - 2);
    size_t len = plen + (size_t)r;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)line[i] < 0x20 || (unsigned char)line[i] == 0x7f)
            line[i] = '?';
    line[len++] = '\n';
    send_all(line, len);
}

static void send_line(const char *prefix, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void send_line(const char *prefix, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    send_linev(prefix, fmt, ap);
    va_end(ap);
}

/* One read(2) of at most n bytes from fd 3, retried on EINTR; end of file or
 * an error means the harness went away: exit 75. */
static size_t read_channel(void *dst, size_t n)
{
    for (;;) {
        ssize_t r = read(REM_CONTROL_FD, dst, n);
        if (r > 0)
            return (size_t)r;
        if (r < 0 && errno == EINTR)
            continue;
        channel_closed();
    }
}

/* Read exactly n raw bytes from fd 3 into dst; EOF exits 75. */
static void read_exact(void *dst, size_t n)
{
    unsigned char *p = dst;
    while (n > 0) {
        size_t r = read_channel(p, n);
        p += r;
        n -= r;
    }
}

/* Read one control line (without '\n') byte by byte: never consumes a byte
 * past the newline.  Returns 0 on success, -1 if the line is too long or
 * not printable ASCII (its content is never echoed anywhere). */
static int read_control_line(char *buf, size_t cap)
{
    size_t len = 0;
    int bad = 0;
    for (;;) {
        char c;
        read_channel(&c, 1);
        if (c == '\n')
            break;
        if ((unsigned char)c < 0x20 || (unsigned char)c > 0x7e)
            bad = 1;
        if (len + 1 < cap)
            buf[len++] = c;
        else
            bad = 1;
    }
    buf[len] = '\0';
    return bad ? -1 : 0;
}

/* A scenario or checkpoint name: [A-Za-z0-9._-]+ */
static int valid_name(const char *s)
{
    if (s == NULL || *s == '\0')
        return 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* A derived value's label: [a-z0-9_]{1,64} */
static int valid_label(const char *s)
{
    size_t len = 0;
    if (s == NULL)
        return 0;
    for (; s[len]; len++) {
        unsigned char c = (unsigned char)s[len];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return 0;
    }
    return len >= 1 && len <= REM_LABEL_MAX;
}

/* Calling the SDK before rem_start() is a bug in the program, not a result. */
static void require_started(const char *fn)
{
    if (!started) {
        fprintf(stderr, "%s: %s() called before rem_start()\n",
                program_invocation_short_name, fn);
        abort();
    }
}

/* Parse a decimal environment variable into [lo, hi]; 0 on success. */
static int env_size(const char *var, size_t lo, size_t hi, size_t *out)
{
    const char *s = getenv(var);
    size_t v = 0;
    if (s == NULL || *s == '\0')
        return -1;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9' || v > hi)
            return -1;
        v = v * 10 + (size_t)(*p - '0');
    }
    if (v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* ------------------------------------------------------------ conversation */

size_t rem_start(void)
{
    size_t canary_len;
    unsigned char *canary;
    const char *proto;

    if (started) {
        fprintf(stderr, "%s: rem_start() called twice\n",
                program_invocation_short_name);
        abort();
    }
    started = 1;
    /* A vanished harness must give exit 75, not death by SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    if (fcntl(REM_CONTROL_FD, F_GETFD) < 0)
        channel_closed();

    send_line("ready ", "1");

    proto = getenv("REMANENCE_PROTOCOL");
    if (proto != NULL && strcmp(proto, "1") != 0)
        rem_fail("unsupported REMANENCE_PROTOCOL (this target speaks 1)");
    if (env_size("REMANENCE_SECRET_LEN", 1, REM_SECRET_MAX, &secret_len) != 0)
        rem_fail("REMANENCE_SECRET_LEN must be an integer in 1..%d",
                 REM_SECRET_MAX);
    if (env_size("REMANENCE_CANARY_LEN", 1, REM_CANARY_MAX, &canary_len) != 0)
        rem_fail("REMANENCE_CANARY_LEN must be an integer in 1..%u",
                 REM_CANARY_MAX);

    canary = malloc(canary_len);
    if (canary == NULL)
        rem_fail("cannot allocate %zu canary bytes", canary_len);
    read_exact(canary, canary_len);
    canary_keep = canary;
    return secret_len;
}

size_t rem_secret_len(void)
{
    require_started(__func__);
    return secret_len;
}

void rem_claim_secret(size_t n)
{
    require_started(__func__);
    if (n > secret_len - secret_consumed)
        rem_fail("asked for %zu secret bytes, only %zu left", n,
                 secret_len - secret_consumed);
    secret_consumed += n;
}

void rem_read_secret(void *dst, size_t n)
{
    rem_claim_secret(n);
    read_exact(dst, n);
}

void rem_use(const void *key, size_t n)
{
    const volatile unsigned char *p = key;
    unsigned sum = 0;
    for (size_t i = 0; i < n; i++)
        sum = sum * 31u + p[i];
    use_sink = sum;
}

void rem_checkpoint(const char *name, const void *addr)
{
    char reply[32];

    require_started(__func__);
    if (!valid_name(name))
        rem_fail("invalid checkpoint name");
    /* Otherwise the unread secret bytes would be taken for a control line. */
    if (secret_consumed != secret_len)
        rem_fail("checkpoint %s reached before the whole secret was read", name);
    /* `collect` asks for a full collection of the runtime: C has none, so the
     * checkpoint is simply announced again. */
    do {
        if (addr == NULL)
            send_line("checkpoint ", "%s -", name);
        else
            send_line("checkpoint ", "%s 0x%" PRIxPTR, name, (uintptr_t)addr);
        if (read_control_line(reply, sizeof reply) != 0)
            rem_fail("expected 'continue' after checkpoint %s", name);
    } while (strcmp(reply, "collect") == 0);
    if (strcmp(reply, "continue") != 0)
        rem_fail("expected 'continue' after checkpoint %s", name);
}

void rem_note(const char *fmt, ...)
{
    va_list ap;

    require_started(__func__);
    va_start(ap, fmt);
    send_linev("note ", fmt, ap);
    va_end(ap);
}

void rem_derived(const char *label, const void *value, size_t n)
{
    require_started(__func__);
    if (!valid_label(label))
        rem_fail("invalid derived label (must be [a-z0-9_]{1,%d})",
                 REM_LABEL_MAX);
    if (n < 1 || n > REM_DERIVED_MAX)
        rem_fail("derived %s: length %zu outside 1..%d", label, n,
                 REM_DERIVED_MAX);
    send_line("derived ", "%s %zu", label, n);
    send_all(value, n);
}

void rem_done(void)
{
    require_started(__func__);
    if (secret_consumed != secret_len)
        rem_fail("the program did not read the whole secret (%zu of %zu bytes)",
                 secret_consumed, secret_len);
    send_line("done", "%s", "");
    exit(REM_EXIT_OK);
}

void rem_fail(const char *fmt, ...)
{
    va_list ap;

    require_started(__func__);
    va_start(ap, fmt);
    fprintf(stderr, "%s: error: ", program_invocation_short_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    va_start(ap, fmt);
    send_linev("error ", fmt, ap);
    va_end(ap);
    exit(REM_EXIT_FAILED);
}

/* ---------------------------------------------------------------- registry */

struct rem_entry {
    const char *name;
    rem_scenario_fn fn;
};

static struct rem_entry registry[REM_MAX_SCENARIOS];
static size_t registry_len;

void rem_register(const char *name, rem_scenario_fn fn)
{
    const char *me = program_invocation_short_name;

    if (!valid_name(name) || fn == NULL) {
        fprintf(stderr, "%s: invalid scenario registration '%s'\n", me,
                name ? name : "(null)");
        abort();
    }
    for (size_t i = 0; i < registry_len; i++) {
        if (strcmp(registry[i].name, name) == 0) {
            fprintf(stderr, "%s: duplicate scenario registration '%s'\n", me,
                    name);
            abort();
        }
    }
    if (registry_len == REM_MAX_SCENARIOS) {
        fprintf(stderr, "%s: too many scenarios (max %d)\n", me,
                REM_MAX_SCENARIOS);
        abort();
    }
    registry[registry_len].name = name;
    registry[registry_len].fn = fn;
    registry_len++;
}

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const struct rem_entry *)a)->name,
                  ((const struct rem_entry *)b)->name);
}

static void print_names(FILE *out, const char *sep)
{
    for (size_t i = 0; i < registry_len; i++)
        fprintf(out, "%s%s", i ? sep : "", registry[i].name);
}

static void die_usage(const char *name) __attribute__((noreturn));
static void die_usage(const char *name)
{
    fprintf(stderr, "unknown scenario '%s'; known: ", name);
    print_names(stderr, " ");
    fputc('\n', stderr);
    exit(REM_EXIT_USAGE);
}

int rem_main(int argc, char **argv)
{
    const struct rem_entry *scenario = NULL;

    qsort(registry, registry_len, sizeof registry[0], entry_cmp);

    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        print_names(stdout, "\n");
        if (registry_len)
            fputc('\n', stdout);
        return fflush(stdout) == 0 ? REM_EXIT_OK : 1;
    }
    if (argc != 2)
        die_usage(argc > 1 ? argv[1] : "");
    for (size_t i = 0; i < registry_len; i++)
        if (strcmp(registry[i].name, argv[1]) == 0)
            scenario = &registry[i];
    if (scenario == NULL)
        die_usage(argv[1]);

    rem_start();
    scenario->fn();
    rem_done();
}
