/*
 * The test program: runs the keystore under remanence, one twin per
 * scenario file (argv[1] is "leaky" or "clean").
 *
 *   in_use      the key is live in its key object (expect: present)
 *   after_wipe  key_free_*() has erased and freed it (expect: absent)
 */
#include "keystore.h"
#include "remanence.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    void (*key_free)(struct key *);

    /* Check argv before rem_start(): `ready 1` says the arguments were fine. */
    if (argc == 2 && strcmp(argv[1], "leaky") == 0)
        key_free = key_free_leaky;
    else if (argc == 2 && strcmp(argv[1], "clean") == 0)
        key_free = key_free_clean;
    else {
        fprintf(stderr, "usage: %s leaky|clean\n", argv[0]);
        return REM_EXIT_USAGE;
    }

    size_t n = rem_start(); /* ready 1, canary; n = the secret's length */
    struct key *k = key_new("demo", n);
    if (k == NULL)
        rem_fail("out of memory for a %zu-byte key", n);
    rem_read_secret(k->bytes, n); /* straight into the key object */
    rem_use(k->bytes, n);         /* as real code would */

    const void *where = k->bytes; /* reported at both checkpoints */
    rem_checkpoint("in_use", where);
    key_free(k);
    rem_checkpoint("after_wipe", where);
    rem_done();
}
