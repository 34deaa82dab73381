/*
 * selftest.* scenarios: misbehaving targets for the harness's own robustness
 * tests (hangs, crashes, protocol errors). No scenario file of the built-in
 * suite uses them.
 */
#define _GNU_SOURCE
#include "protocol.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

static unsigned char key[REM_SECRET_MAX];

static void read_key(void)
{
    rem_read_secret(key, rem_secret_len());
}

/* Never reaches a checkpoint: the harness must time out and kill it. */
static void selftest_hang(void)
{
    read_key();
    for (;;)
        pause();
}

/* Leaves a child in its process group: killing the group must take it too. */
static void selftest_fork_hang(void)
{
    read_key();
    pid_t child = fork();

    if (child == 0) {
        for (;;)
            pause();
    }
    if (child < 0)
        rem_fail("fork failed");
    rem_note("child=%d", (int)child);
    for (;;)
        pause();
}

/* Crashes after its first checkpoint. */
static void selftest_crash(void)
{
    read_key();
    rem_checkpoint("in_use", key);
    raise(SIGSEGV);
}

/* Announces a checkpoint no scenario file declares. */
static void selftest_surprise(void)
{
    read_key();
    rem_checkpoint("surprise", key);
}

/* Reports that it cannot do what it claims. */
static void selftest_fail(void)
{
    read_key();
    rem_fail("deliberate failure for the harness's tests");
}

/* Forbids its own core dumps, as memguard does: soft and hard RLIMIT_CORE 0. */
static void selftest_nocore(void)
{
    struct rlimit none = {0, 0};

    if (setrlimit(RLIMIT_CORE, &none) != 0)
        rem_fail("setrlimit(RLIMIT_CORE) failed");
    read_key();
    rem_checkpoint("in_use", key);
}

REMANENCE_SCENARIO("selftest.hang", selftest_hang);
REMANENCE_SCENARIO("selftest.nocore", selftest_nocore);
REMANENCE_SCENARIO("selftest.fork_hang", selftest_fork_hang);
REMANENCE_SCENARIO("selftest.crash", selftest_crash);
REMANENCE_SCENARIO("selftest.surprise", selftest_surprise);
REMANENCE_SCENARIO("selftest.fail", selftest_fail);
