/*
 * remanence C SDK: the target protocol (targets/PROTOCOL.md, version 1) as a
 * small library compiled into your own test program.  Needs only libc.
 *
 * A program with one scenario:
 *
 *     #include "remanence.h"
 *
 *     int main(void)
 *     {
 *         size_t n = rem_start();             // ready 1, canary; n = secret length
 *         unsigned char *key = malloc(n);
 *         rem_read_secret(key, n);            // straight into your storage
 *         rem_checkpoint("in_use", key);      // harness snapshots, then continue
 *         wipe_key(key, n);                   // the code under test
 *         rem_checkpoint("after_wipe", key);  // where the key was
 *         rem_done();                         // done, exit 0
 *     }
 *
 * A program with many scenarios (as targets/c/) registers each at file scope
 *
 *     REMANENCE_SCENARIO("sodium.live", sodium_live);   // void sodium_live(void)
 *
 * and hands main() to the registry:  return rem_main(argc, argv);
 *
 * fd 3 carries raw bytes and control lines, so the SDK never reads it through
 * a buffering reader, and never prints or logs bytes read from it.  Every
 * function that talks to the harness exits 75 if fd 3 is closed.  Functions
 * other than rem_start(), rem_main() and rem_use() may only be called after
 * rem_start() (otherwise the program aborts: a bug in the program).
 */
#ifndef REMANENCE_SDK_H
#define REMANENCE_SDK_H

#include <stddef.h>

#define REM_EXIT_OK 0
#define REM_EXIT_USAGE 64          /* unknown or missing scenario name */
#define REM_EXIT_FAILED 70         /* an `error` line was sent */
#define REM_EXIT_CHANNEL_CLOSED 75 /* fd 3 closed early */

#define REM_CONTROL_FD 3
#define REM_SECRET_MAX 4096
#define REM_DERIVED_MAX 4096

/* ------------------------------------------------------------ conversation */

/* Start the conversation; call it once, after checking your own argv.
 * Sends `ready 1`, checks the REMANENCE_* environment (bad values: `error`
 * line, exit 70), reads the canary into a heap buffer that stays live and
 * unwiped until exit (the positive control every snapshot must show), and
 * returns the secret length n (1..REM_SECRET_MAX).  The secret itself is
 * still unread: read it with rem_read_secret(). */
size_t rem_start(void);

/* The secret length returned by rem_start(). */
size_t rem_secret_len(void);

/* Read the next n secret bytes from fd 3 straight into dst (your final
 * storage: no intermediate copy is made).  May be called several times
 * (e.g. two halves into two places); more bytes than remain: exit 70. */
void rem_read_secret(void *dst, size_t n);

/* Only for a program that reads the secret from fd 3 by its own means
 * because an intermediate copy is its point (e.g. through stdio): call right
 * before that read, to account for the n bytes it is about to consume. */
void rem_claim_secret(size_t n);

/* Stop at a checkpoint: send `checkpoint <name> 0x<addr>` (where the secret
 * is, or was, kept; NULL sends `-`) and wait for `continue`.  Name it as the
 * scenario file's [[checkpoints]] do, in their order ([A-Za-z0-9._-]+).  The
 * whole secret must have been read by now (otherwise exit 70). */
void rem_checkpoint(const char *name, const void *addr);

/* Send `note <text>`: one or more key=value pairs, e.g.
 * rem_note("mlock=denied errno=%d", errno).  Never the secret. */
void rem_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Send `derived <label> <n>` and the n bytes of a value computed from the
 * secret (a session key, a subkey) that the harness must look for too.
 * label: [a-z0-9_]{1,64}; n: 1..REM_DERIVED_MAX.  Send it once, before the
 * first checkpoint whose scenario file has an expectation for it. */
void rem_derived(const char *label, const void *value, size_t n);

/* Finish: send `done` and exit 0.  The whole secret must have been read
 * (otherwise exit 70). */
void rem_done(void) __attribute__((noreturn));

/* The program cannot do what it claims: send `error <text>` (also written to
 * stderr) and exit 70.  Never put the secret in the text. */
void rem_fail(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));

/* "Use" a key: a byte-wise checksum through a volatile pointer, so the
 * compiler must keep the bytes (and cannot prove a later wipe dead because
 * nothing read them).  Makes no copy. */
void rem_use(const void *key, size_t n);

/* ------------------------------------------ optional: a scenario registry */

typedef void (*rem_scenario_fn)(void);

/* Register fn under name at file scope (an ELF constructor: every scenario is
 * known before main; a duplicate or invalid name aborts the program there). */
#define REMANENCE_SCENARIO(name, fn)                                          \
    __attribute__((constructor)) static void REM_CAT(rem_register_, __LINE__)( \
        void)                                                                  \
    {                                                                          \
        rem_register((name), (fn));                                            \
    }                                                                          \
    extern int rem_scenario_registered_ /* lets the use end with ';' */

/* Run the scenario named by argv[1]: `--list` prints the registered names
 * sorted, one a line (exit 0); an unknown or missing name prints
 * `unknown scenario 'X'; known: a b c` on stderr (exit 64); otherwise
 * rem_start(), the scenario, rem_done().  Use as `return rem_main(argc, argv);`. */
int rem_main(int argc, char **argv);

/* Called by REMANENCE_SCENARIO's constructor. */
void rem_register(const char *name, rem_scenario_fn fn);

#define REM_CAT_(a, b) a##b
#define REM_CAT(a, b) REM_CAT_(a, b)

#endif
