/*
 * stdio scenario: stdio.copy, the classic leftover.
 *
 * The key is read with fread() from a FILE on a dup of fd 3.  The key's own
 * storage is a sodium_malloc buffer, wiped by sodium_free, but glibc's stdio
 * first read()s the bytes into the FILE's private heap buffer and memcpy()s
 * them out: that buffer is a second copy nobody wipes, and fclose() just
 * free()s it.
 *
 * Why this cannot swallow the harness's later `continue` lines: the FILE
 * is only read by this one fread(), which happens before the first
 * checkpoint, and the harness sends nothing after the secret until it has
 * seen that checkpoint.  So stdio's read() can only ever return secret
 * bytes; this is also checked below (no read-ahead left in the FILE), and
 * the control lines are then read from fd 3 itself, never via the FILE.
 *
 * The secret may arrive in pieces (one write each, PROTOCOL.md).  stdio
 * refills its buffer from the start at each read(), so it would then hold
 * only the last piece: the scenario waits until the whole secret is queued
 * on fd 3, and stdio's one read() takes all of it.
 *
 * glibc sizes the FILE buffer as min(st_blksize, BUFSIZ), 4096 on a socket,
 * and an fread() of at least a whole buffer bypasses it (read() straight
 * into the destination, no copy).  So the secret must be shorter than the
 * buffer, otherwise the scenario would not show what it claims: rem_fail.
 */
#define _GNU_SOURCE
#include "remanence.h"

#include <errno.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

/* The FILE buffer size glibc will pick for fd (see _IO_file_doallocate). */
static size_t predicted_bufsize(int fd)
{
    struct stat st;
    size_t size = BUFSIZ;

    if (fstat(fd, &st) == 0 && st.st_blksize > 0 &&
        (size_t)st.st_blksize < (size_t)BUFSIZ)
        size = (size_t)st.st_blksize;
    return size;
}

/* Until n bytes are queued on fd, or its writer is gone (fread then reports
 * the short read). */
static void wait_until_queued(int fd, size_t n)
{
    struct pollfd ready = {.fd = fd, .events = POLLIN};
    int queued;

    while (ioctl(fd, FIONREAD, &queued) == 0 && (size_t)queued < n) {
        if (poll(&ready, 1, -1) < 0 && errno != EINTR)
            return;
        if (ready.revents & (POLLHUP | POLLERR))
            return;
        if (queued > 0) /* a piece is there and poll() says so at once */
            usleep(1000);
    }
}

#ifdef __GLIBC__
/* Does the FILE's buffer hold exactly the n key bytes, fully consumed, with
 * nothing read ahead?  Byte-wise via volatile pointers: no further copy. */
static int stdio_buffer_holds_copy(FILE *f, const unsigned char *key, size_t n)
{
    const volatile unsigned char *buf =
        (const unsigned char *)f->_IO_read_base;
    const volatile unsigned char *k = key;
    unsigned diff = 0;

    if (f->_IO_read_base == NULL || f->_IO_read_ptr != f->_IO_read_end ||
        (size_t)(f->_IO_read_end - f->_IO_read_base) != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        diff |= buf[i] ^ k[i];
    return diff == 0;
}
#endif

static void stdio_copy(void)
{
    size_t n = rem_secret_len();
    size_t bufsize;
    unsigned char *key;
    const void *old;
    FILE *f;
    int fd;

    fd = dup(REM_CONTROL_FD);
    if (fd < 0)
        rem_fail("dup(%d) failed: errno=%d", REM_CONTROL_FD, errno);
    bufsize = predicted_bufsize(fd);
    if (n >= bufsize)
        rem_fail("secret of %zu bytes is not shorter than the %zu-byte stdio "
                 "buffer: fread would bypass it",
                 n, bufsize);
    f = fdopen(fd, "rb");
    if (f == NULL)
        rem_fail("fdopen failed: errno=%d", errno);

    if (sodium_init() < 0)
        rem_fail("sodium_init failed");
    key = sodium_malloc(n);
    if (key == NULL)
        rem_fail("sodium_malloc(%zu) failed", n);
    old = key;

    /* Not rem_read_secret(): the intermediate copy is the point here. */
    rem_claim_secret(n);
    wait_until_queued(fd, n);
    if (fread(key, 1, n, f) != n) {
        fprintf(stderr, "remanence-target-c: control channel closed "
                        "(fread of the secret)\n");
        exit(REM_EXIT_CHANNEL_CLOSED);
    }
    if (__fbufsize(f) <= n)
        rem_fail("stdio buffer (%zu bytes) did not hold the secret",
                 __fbufsize(f));
#ifdef __GLIBC__
    if (!stdio_buffer_holds_copy(f, key, n))
        rem_fail("stdio buffer does not hold exactly one copy of the secret");
#endif
    rem_use(key, n);

    rem_checkpoint("in_use", key);
    if (fclose(f) != 0) /* frees the stdio buffer, unwiped */
        rem_fail("fclose failed: errno=%d", errno);
    rem_checkpoint("closed", key);
    sodium_free(key);
    rem_checkpoint("freed", old);
}

REMANENCE_SCENARIO("stdio.copy", stdio_copy);
