/*
 * remanence C target: the conversation with the harness (see ../PROTOCOL.md).
 *
 * A scenario is a `void fn(void)` registered under a name with
 *
 *     REMANENCE_SCENARIO("sodium.live", sodium_live);
 *
 * (at file scope, in any scenarios_*.c file).
 *
 * The registration runs as an ELF constructor, so every scenario is known
 * before main() starts; registering a name twice aborts the program there.
 *
 * Inside a scenario:
 *   rem_secret_len()          the secret length n (REMANENCE_SECRET_LEN, 1..4096)
 *   rem_read_secret(dst, n)   read exactly n secret bytes from fd 3 into dst
 *   rem_claim_secret(n)       account for n secret bytes read by other means
 *   rem_use(p, n)             "use" a key: byte-wise checksum via a volatile pointer
 *   rem_checkpoint(name, a)   stop, report `checkpoint <name> 0x<a>`, wait for `continue`
 *   rem_note(fmt, ...)        send `note <text>` (never the secret)
 *   rem_fail(fmt, ...)        send `error <text>` and exit 70
 */
#ifndef REMANENCE_PROTOCOL_H
#define REMANENCE_PROTOCOL_H

#include <stddef.h>

#define REM_EXIT_OK 0
#define REM_EXIT_USAGE 64
#define REM_EXIT_FAILED 70
#define REM_EXIT_CHANNEL_CLOSED 75

#define REM_CONTROL_FD 3
#define REM_SECRET_MAX 4096

typedef void (*rem_scenario_fn)(void);

/* Called by REMANENCE_SCENARIO's constructor; aborts on a duplicate name. */
void rem_register(const char *name, rem_scenario_fn fn);

#define REM_CAT_(a, b) a##b
#define REM_CAT(a, b) REM_CAT_(a, b)

#define REMANENCE_SCENARIO(name, fn)                                          \
    __attribute__((constructor)) static void REM_CAT(rem_register_, __LINE__)( \
        void)                                                                  \
    {                                                                          \
        rem_register((name), (fn));                                            \
    }                                                                          \
    extern int rem_scenario_registered_ /* lets the use end with ';' */

size_t rem_secret_len(void);
void rem_read_secret(void *dst, size_t n);
/* For a scenario that reads the secret from fd 3 by its own means (only
 * when an intermediate copy is its point, e.g. stdio.copy): call right
 * before that read, to account for the n bytes it is about to consume. */
void rem_claim_secret(size_t n);
void rem_use(const void *key, size_t n);
void rem_checkpoint(const char *name, const void *addr);
void rem_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void rem_fail(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));

#endif
