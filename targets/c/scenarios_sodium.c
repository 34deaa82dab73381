/*
 * libsodium guarded-memory scenarios: sodium.live, sodium.freed,
 * sodium.noaccess, sodium.readonly, sodium.mlock_denied.
 */
#define _GNU_SOURCE
#include "remanence.h"
#include "sodium_key.h"

#include <errno.h>
#include <linux/capability.h>
#include <sodium.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

unsigned char *sodium_key(size_t n)
{
    unsigned char *key;

    if (sodium_init() < 0)
        rem_fail("sodium_init failed");
    key = sodium_malloc(n);
    if (key == NULL)
        rem_fail("sodium_malloc(%zu) failed", n);
    rem_read_secret(key, n);
    rem_use(key, n);
    return key;
}

static void sodium_live(void)
{
    size_t n = rem_secret_len();
    unsigned char *key = sodium_key(n);

    rem_checkpoint("in_use", key);
    sodium_free(key);
}

static void sodium_freed(void)
{
    size_t n = rem_secret_len();
    unsigned char *key = sodium_key(n);
    const void *old = key;

    rem_checkpoint("in_use", key);
    sodium_free(key);
    rem_checkpoint("freed", old);
}

static void sodium_noaccess(void)
{
    size_t n = rem_secret_len();
    unsigned char *key = sodium_key(n);

    rem_checkpoint("in_use", key);
    if (sodium_mprotect_noaccess(key) != 0)
        rem_fail("sodium_mprotect_noaccess failed: errno=%d", errno);
    rem_checkpoint("noaccess", key);
    if (sodium_mprotect_readwrite(key) != 0)
        rem_fail("sodium_mprotect_readwrite failed: errno=%d", errno);
    sodium_free(key);
}

static void sodium_readonly(void)
{
    size_t n = rem_secret_len();
    unsigned char *key = sodium_key(n);

    rem_checkpoint("in_use", key);
    if (sodium_mprotect_readonly(key) != 0)
        rem_fail("sodium_mprotect_readonly failed: errno=%d", errno);
    rem_checkpoint("readonly", key);
    if (sodium_mprotect_readwrite(key) != 0)
        rem_fail("sodium_mprotect_readwrite failed: errno=%d", errno);
    sodium_free(key);
}

/* Make mlock() impossible, even for root: drop CAP_IPC_LOCK from the
 * effective and permitted sets (raw capget/capset, no libcap) and set
 * RLIMIT_MEMLOCK to 0/0.  Then prove it with a one-page probe. */
static void deny_mlock(void)
{
    struct __user_cap_header_struct hdr = {
        .version = _LINUX_CAPABILITY_VERSION_3,
        .pid = 0,
    };
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    const struct rlimit zero = { 0, 0 };
    const unsigned idx = CAP_TO_INDEX(CAP_IPC_LOCK);
    const unsigned mask = CAP_TO_MASK(CAP_IPC_LOCK);
    long page = sysconf(_SC_PAGESIZE);
    void *probe;
    int err;

    if (syscall(SYS_capget, &hdr, data) != 0)
        rem_fail("capget failed: errno=%d", errno);
    data[idx].effective &= ~mask;
    data[idx].permitted &= ~mask;
    data[idx].inheritable &= ~mask;
    if (syscall(SYS_capset, &hdr, data) != 0)
        rem_fail("capset failed: errno=%d", errno);
    if (setrlimit(RLIMIT_MEMLOCK, &zero) != 0)
        rem_fail("setrlimit(RLIMIT_MEMLOCK, 0) failed: errno=%d", errno);

    if (page <= 0)
        page = 4096;
    probe = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (probe == MAP_FAILED)
        rem_fail("mmap of the mlock probe page failed: errno=%d", errno);
    if (mlock(probe, (size_t)page) == 0) {
        munlock(probe, (size_t)page);
        munmap(probe, (size_t)page);
        rem_fail("mlock was not denied");
    }
    err = errno;
    munmap(probe, (size_t)page);
    rem_note("mlock=denied errno=%d", err);
}

static void sodium_mlock_denied(void)
{
    size_t n;
    unsigned char *key;

    deny_mlock();
    n = rem_secret_len();
    key = sodium_key(n);
    rem_checkpoint("in_use", key);
    sodium_free(key);
}

REMANENCE_SCENARIO("sodium.live", sodium_live);
REMANENCE_SCENARIO("sodium.freed", sodium_freed);
REMANENCE_SCENARIO("sodium.noaccess", sodium_noaccess);
REMANENCE_SCENARIO("sodium.readonly", sodium_readonly);
REMANENCE_SCENARIO("sodium.mlock_denied", sodium_mlock_denied);

#ifdef REMANENCE_DUPLICATE_FOR_TEST
/* Test-only build (make dup): a second registration of an existing name must
 * abort the program before main() runs any scenario. */
REMANENCE_SCENARIO("sodium.live", sodium_freed);
#endif
