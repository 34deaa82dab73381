/*
 * Expected crashes: libsodium's guarded memory must kill the program at an
 * illegal access, and each scenario's twin does the legal thing and must not.
 *
 *   sodium.overflow           one byte past the end of a sodium_malloc'd key: the
 *                             user region ends where the guard page starts
 *   sodium.overflow.in_bounds twin: the last byte, in bounds
 *   sodium.underflow          8 bytes before the start (inside the 16-byte canary),
 *                             then sodium_free: its canary check kills the program
 *   sodium.underflow.intact   twin: sodium_free with the canary untouched
 *   sodium.readonly_write     a write after sodium_mprotect_readonly
 *   sodium.readonly_write.readwrite  twin: the write after sodium_mprotect_readwrite
 *   sodium.noaccess_read      a read after sodium_mprotect_noaccess
 *   sodium.noaccess_read.readwrite   twin: the read after sodium_mprotect_readwrite
 *
 * Each crash scenario announces its last checkpoint right before the illegal
 * act; the harness lets it go on and judges how it died and the core it left.
 */
#include "remanence.h"
#include "sodium_key.h"

#include <errno.h>
#include <sodium.h>
#include <stddef.h>

static unsigned char *guarded_key(size_t n)
{
    unsigned char *key = sodium_key(n);

    rem_checkpoint("in_use", key);
    return key;
}

/* Through a volatile pointer: the compiler must emit the access as written. */
static void write_byte(unsigned char *key, ptrdiff_t at)
{
    volatile unsigned char *p = key;

    p[at] ^= 0x5a;
}

static unsigned char read_byte(const unsigned char *key, size_t at)
{
    const volatile unsigned char *p = key;

    return p[at];
}

static void sodium_overflow(void)
{
    size_t n = rem_secret_len();
    unsigned char *key = guarded_key(n);

    rem_checkpoint("past_end", key);
    write_byte(key, (ptrdiff_t) n);
    rem_fail("a write one byte past the end of a sodium_malloc'd key did not crash");
}

static void sodium_overflow_in_bounds(void)
{
    size_t n = rem_secret_len();
    unsigned char *key = guarded_key(n);

    write_byte(key, (ptrdiff_t) n - 1);
    write_byte(key, (ptrdiff_t) n - 1);   /* twice: the key is whole again */
    rem_checkpoint("last_byte", key);
    sodium_free(key);
}

static void sodium_underflow(void)
{
    size_t n = rem_secret_len();
    unsigned char *key = guarded_key(n);

    rem_checkpoint("before_start", key);
    write_byte(key, -8);
    sodium_free(key);
    rem_fail("sodium_free of a key whose canary was overwritten did not crash");
}

static void sodium_underflow_intact(void)
{
    size_t n = rem_secret_len();
    unsigned char *key = guarded_key(n);
    const void *old = key;

    sodium_free(key);
    rem_checkpoint("freed", old);
}

static void protect(int (*how)(void *), const char *name, unsigned char *key)
{
    if (how(key) != 0)
        rem_fail("%s failed: errno=%d", name, errno);
}

static void sodium_readonly_write(void)
{
    size_t n = rem_secret_len();
    unsigned char *key = guarded_key(n);

    protect(sodium_mprotect_readonly, "sodium_mprotect_readonly", key);
    rem_checkpoint("write", key);
    write_byte(key, 0);
    rem_fail("a write to a sodium_mprotect_readonly key did not crash");
}

static void sodium_readonly_write_readwrite(void)
{
    size_t n = rem_secret_len();
    unsigned char *key = guarded_key(n);

    protect(sodium_mprotect_readonly, "sodium_mprotect_readonly", key);
    protect(sodium_mprotect_readwrite, "sodium_mprotect_readwrite", key);
    write_byte(key, 0);
    write_byte(key, 0);
    rem_checkpoint("written", key);
    sodium_free(key);
}

static void sodium_noaccess_read(void)
{
    size_t n = rem_secret_len();
    unsigned char *key = guarded_key(n);

    protect(sodium_mprotect_noaccess, "sodium_mprotect_noaccess", key);
    rem_checkpoint("read", key);
    rem_note("read=%u", read_byte(key, 0));
    rem_fail("a read of a sodium_mprotect_noaccess key did not crash");
}

static void sodium_noaccess_read_readwrite(void)
{
    size_t n = rem_secret_len();
    unsigned char *key = guarded_key(n);

    protect(sodium_mprotect_noaccess, "sodium_mprotect_noaccess", key);
    protect(sodium_mprotect_readwrite, "sodium_mprotect_readwrite", key);
    if (read_byte(key, 0) != key[0])
        rem_fail("the key changed between two reads");
    rem_checkpoint("read", key);
    sodium_free(key);
}

REMANENCE_SCENARIO("sodium.overflow", sodium_overflow);
REMANENCE_SCENARIO("sodium.overflow.in_bounds", sodium_overflow_in_bounds);
REMANENCE_SCENARIO("sodium.underflow", sodium_underflow);
REMANENCE_SCENARIO("sodium.underflow.intact", sodium_underflow_intact);
REMANENCE_SCENARIO("sodium.readonly_write", sodium_readonly_write);
REMANENCE_SCENARIO("sodium.readonly_write.readwrite", sodium_readonly_write_readwrite);
REMANENCE_SCENARIO("sodium.noaccess_read", sodium_noaccess_read);
REMANENCE_SCENARIO("sodium.noaccess_read.readwrite", sodium_noaccess_read_readwrite);
