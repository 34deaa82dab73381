/*
 * keystore: the "library under test" of the example.  A key lives in a heap
 * object; the library promises that key_free() erases it.  It comes in two
 * twins that differ only in how they wipe.
 */
#ifndef KEYSTORE_H
#define KEYSTORE_H

#include <stddef.h>

struct key {
    char label[16];
    size_t len;
    unsigned char bytes[]; /* len bytes of key material */
};

/* A key object with room for n bytes (uninitialised); NULL if out of memory. */
struct key *key_new(const char *label, size_t n);

/* Erase the key material and free the object. */
void key_free_leaky(struct key *k); /* memset + free: the compiler may drop the memset */
void key_free_clean(struct key *k); /* explicit_bzero + free: the wipe must happen */

#endif
