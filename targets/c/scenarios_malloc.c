/*
 * Plain heap scenarios: malloc.nowipe, malloc.memset, malloc.memzero.
 *
 * The key lives inside a struct, after two header fields, as in real code.
 * That matters: when glibc frees a chunk it writes its free-list pointers
 * (tcache next/key, or the bins' fd/bk) over the first 16 bytes of user
 * data, which here are `id` and `flags`; the key at offset 16 is left alone,
 * so whatever is found there after free() is what the scenario left.
 */
#define _GNU_SOURCE
#include "remanence.h"

#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct session {
    uint64_t id;
    uint64_t flags;
    unsigned char key[];
};

static struct session *session_new(size_t n)
{
    struct session *s = malloc(sizeof *s + n);

    if (s == NULL)
        rem_fail("malloc(%zu) failed", sizeof *s + n);
    s->id = 1;
    s->flags = 0;
    rem_read_secret(s->key, n);
    rem_use(s->key, n);
    return s;
}

static void malloc_nowipe(void)
{
    size_t n = rem_secret_len();
    struct session *s = session_new(n);
    const void *where = s->key;

    rem_checkpoint("in_use", where);
    free(s); /* no wipe at all */
    rem_checkpoint("freed", where);
}

static void malloc_memset(void)
{
    size_t n = rem_secret_len();
    struct session *s = session_new(n);
    const void *where = s->key;

    rem_checkpoint("in_use", where);
    /* A dead store as far as the compiler can tell: at -O2 gcc is allowed
     * to (and does, see README.md) delete it.  That is the point; do not
     * "fix" it. */
    memset(s->key, 0, n);
    free(s);
    rem_checkpoint("freed", where);
}

static void malloc_memzero(void)
{
    size_t n = rem_secret_len();
    struct session *s = session_new(n);
    const void *where = s->key;

    rem_checkpoint("in_use", where);
    sodium_memzero(s->key, n);
    free(s);
    rem_checkpoint("freed", where);
}

REMANENCE_SCENARIO("malloc.nowipe", malloc_nowipe);
REMANENCE_SCENARIO("malloc.memset", malloc_memset);
REMANENCE_SCENARIO("malloc.memzero", malloc_memzero);
