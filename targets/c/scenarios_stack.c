/*
 * Stack scenarios: stack.nowipe, stack.explicit_bzero.
 *
 * Layout while the key is live (the stack grows down):
 *
 *     scenario function        <- later calls (rem_checkpoint, vsnprintf,
 *     below_deep_frame: 16 KiB    write, ...) reuse the stack from here
 *       volatile pad              down, i.e. they overwrite the pad first
 *     key_frame: key[64]       <- the key, 16 KiB deeper than the caller
 *     rem_checkpoint("in_use")
 *
 * Without the pad, the `returned` checkpoint's own calls would land on the
 * dead frame and might overwrite the stale key by accident, hiding a real
 * leak (or a wipe that never happened).  With it, whatever is found at the
 * key's old address at `returned` is exactly what key_frame left behind.
 */
#define _GNU_SOURCE
#include "remanence.h"

#include <stdint.h>
#include <string.h>

#define STACK_KEY_CAP 64
#define STACK_PAD (16 * 1024)

typedef void (*key_frame_fn)(uintptr_t *where);

static __attribute__((noinline, noclone)) void
below_deep_frame(key_frame_fn fn, uintptr_t *where)
{
    volatile unsigned char pad[STACK_PAD];

    pad[0] = 0;
    pad[STACK_PAD - 1] = 0;
    fn(where);
    /* Touching pad after the call keeps the frame (no tail call). */
    pad[0] = pad[STACK_PAD - 1];
}

static __attribute__((noinline, noclone)) void nowipe_frame(uintptr_t *where)
{
    unsigned char key[STACK_KEY_CAP];
    size_t n = rem_secret_len();

    rem_read_secret(key, n);
    rem_use(key, n);
    rem_checkpoint("in_use", key);
    *where = (uintptr_t)key; /* the address only, for `returned` */
    /* returns without wiping */
}

static __attribute__((noinline, noclone)) void
explicit_bzero_frame(uintptr_t *where)
{
    unsigned char key[STACK_KEY_CAP];
    size_t n = rem_secret_len();

    rem_read_secret(key, n);
    rem_use(key, n);
    rem_checkpoint("in_use", key);
    *where = (uintptr_t)key;
    explicit_bzero(key, sizeof key);
}

static void run_stack_scenario(key_frame_fn fn)
{
    uintptr_t where = 0;
    size_t n = rem_secret_len();

    if (n > STACK_KEY_CAP)
        rem_fail("secret of %zu bytes does not fit the %d-byte stack key", n,
                 STACK_KEY_CAP);
    below_deep_frame(fn, &where);
    rem_checkpoint("returned", (const void *)where);
}

static void stack_nowipe(void)
{
    run_stack_scenario(nowipe_frame);
}

static void stack_explicit_bzero(void)
{
    run_stack_scenario(explicit_bzero_frame);
}

REMANENCE_SCENARIO("stack.nowipe", stack_nowipe);
REMANENCE_SCENARIO("stack.explicit_bzero", stack_explicit_bzero);
