#define _DEFAULT_SOURCE /* explicit_bzero */
#include "keystore.h"

#include <stdlib.h>
#include <string.h>

struct key *key_new(const char *label, size_t n)
{
    struct key *k = malloc(sizeof *k + n);

    if (k == NULL)
        return NULL;
    strncpy(k->label, label, sizeof k->label - 1);
    k->label[sizeof k->label - 1] = '\0';
    k->len = n;
    return k;
}

/* Looks right, is not: the bytes are never read again before free(), so
 * the memset is a dead store and an optimising compiler may delete it (gcc
 * and clang do at -O2).  The key stays in the freed heap chunk. */
void key_free_leaky(struct key *k)
{
    memset(k->bytes, 0, k->len);
    free(k);
}

/* explicit_bzero (glibc >= 2.25, the BSDs) is a wipe the compiler must keep. */
void key_free_clean(struct key *k)
{
    explicit_bzero(k->bytes, k->len);
    free(k);
}
