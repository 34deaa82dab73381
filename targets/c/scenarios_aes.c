/*
 * AES key schedule scenarios: sodium.aes256gcm.state_kept, sodium.aes256gcm.state_wiped.
 *
 * crypto_aead_aes256gcm_beforenm expands the key into the state (with AES-NI: the 15 round keys in FIPS-197
 * byte order at the start of the state). Wiping the key afterwards leaves the schedule, from which the key
 * follows: the classic leak key-finding tools look for.
 */
#include "remanence.h"

#include <sodium.h>
#include <stdlib.h>

/* The key read into a malloc'd buffer, expanded into `state`, then wiped (sodium_memzero) and freed: only the
 * state is left. Plain heap memory for both, as most programs keep them: every snapshot method sees it (a
 * sodium_malloc'd page is MADV_DONTDUMP, left out of gcores). */
static void scrub_after_expansion(void);

static void expand_and_wipe_key(crypto_aead_aes256gcm_state *state)
{
    unsigned char *key;

    if (sodium_init() < 0)
        rem_fail("sodium_init failed");
    if (!crypto_aead_aes256gcm_is_available())
        rem_fail("crypto_aead_aes256gcm is not available: this CPU lacks AES-NI or PCLMUL");
    if (rem_secret_len() != crypto_aead_aes256gcm_KEYBYTES)
        rem_fail("the secret must be %d bytes (secret.length in the scenario)", crypto_aead_aes256gcm_KEYBYTES);
    key = malloc(crypto_aead_aes256gcm_KEYBYTES);
    if (key == NULL)
        rem_fail("malloc failed");
    rem_read_secret(key, crypto_aead_aes256gcm_KEYBYTES);
    rem_checkpoint("key_loaded", key);
    crypto_aead_aes256gcm_beforenm(state, key);
    sodium_memzero(key, crypto_aead_aes256gcm_KEYBYTES);
    free(key);
    scrub_after_expansion();
}

/* beforenm leaves the key's second half (round key 1) behind in a vector register and in the dead stack below
 * its caller (measured with libsodium 1.0.18): clear both, so that what differs between the twins is the state
 * alone. The register is in every core's register notes, the stack in every image. */
static __attribute__((noinline)) void scrub_after_expansion(void)
{
    volatile unsigned char dead_stack[16384];

    sodium_memzero((unsigned char *) dead_stack, sizeof dead_stack);
#if defined(__x86_64__)
    __asm__ volatile("pxor %%xmm0, %%xmm0\n\tpxor %%xmm1, %%xmm1\n\tpxor %%xmm2, %%xmm2\n\tpxor %%xmm3, %%xmm3\n\t"
                     "pxor %%xmm4, %%xmm4\n\tpxor %%xmm5, %%xmm5\n\tpxor %%xmm6, %%xmm6\n\tpxor %%xmm7, %%xmm7\n\t"
                     "pxor %%xmm8, %%xmm8\n\tpxor %%xmm9, %%xmm9\n\tpxor %%xmm10, %%xmm10\n\tpxor %%xmm11, %%xmm11\n\t"
                     "pxor %%xmm12, %%xmm12\n\tpxor %%xmm13, %%xmm13\n\tpxor %%xmm14, %%xmm14\n\tpxor %%xmm15, %%xmm15"
                     ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
                         "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
#endif
}

/* The state needs 16-byte alignment (it holds SSE vectors). */
static crypto_aead_aes256gcm_state *new_state(void)
{
    crypto_aead_aes256gcm_state *state = aligned_alloc(16, sizeof *state);

    if (state == NULL)
        rem_fail("aligned_alloc failed");
    return state;
}

static void state_kept(void)
{
    crypto_aead_aes256gcm_state *state = new_state();

    expand_and_wipe_key(state);
    rem_checkpoint("key_wiped", state);
    free(state);
}

static void state_wiped(void)
{
    crypto_aead_aes256gcm_state *state = new_state();

    expand_and_wipe_key(state);
    sodium_memzero(state, sizeof *state);
    rem_checkpoint("key_wiped", state);
    free(state);
}

REMANENCE_SCENARIO("sodium.aes256gcm.state_kept", state_kept);
REMANENCE_SCENARIO("sodium.aes256gcm.state_wiped", state_wiped);
