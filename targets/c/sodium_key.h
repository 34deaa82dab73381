/* The scenarios' shared way of holding a key in libsodium's guarded memory. */
#ifndef REMANENCE_TARGET_SODIUM_KEY_H
#define REMANENCE_TARGET_SODIUM_KEY_H

#include <stddef.h>

/* sodium_init, sodium_malloc(n), read the secret straight into it, use it. */
unsigned char *sodium_key(size_t n);

#endif
