/*
 * selftest.* scenarios: misbehaving targets for the harness's own robustness
 * tests (hangs, crashes, protocol errors). No scenario file of the built-in
 * suite uses them.
 */
#define _GNU_SOURCE
#include "remanence.h"

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

static void die_now(int sig)
{
    (void)sig;
    signal(SIGSEGV, SIG_DFL);
    raise(SIGSEGV);
}

/* Dies (SIGSEGV from a timer) 50 ms into its first checkpoint, while the harness is taking snapshots: as an
 * OOM kill or a crash in another thread would. */
static void selftest_die_in_checkpoint(void)
{
    read_key();
    signal(SIGALRM, die_now);
    ualarm(50000, 0);
    rem_checkpoint("in_use", key);
    rem_checkpoint("after", NULL);
}

/* Starts a daemon as gpg starts gpg-agent (fork, setsid, fork again) that keeps a copy of the key and
 * outlives the target's process group. */
static void selftest_daemon(void)
{
    read_key();
    pid_t child = fork();

    if (child < 0)
        rem_fail("fork failed");
    if (child == 0) {
        close(REM_CONTROL_FD);    /* the harness must see the target end, not wait for the daemon */
        setsid();
        if (fork() != 0)
            _exit(0);
        static unsigned char daemon_copy[REM_SECRET_MAX];
        for (size_t i = 0; i < rem_secret_len(); i++)
            daemon_copy[i] = key[i];
        rem_use(daemon_copy, rem_secret_len());
        for (;;)
            pause();
    }
    rem_checkpoint("in_use", key);
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
REMANENCE_SCENARIO("selftest.die_in_checkpoint", selftest_die_in_checkpoint);
REMANENCE_SCENARIO("selftest.daemon", selftest_daemon);
