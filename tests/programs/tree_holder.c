/* A program whose secret ends up in a process other than the one started, written for tests/test_follow.py.
 * The secret is one line on stdin, read with read(2) into a heap buffer and held (never wiped) until killed.
 *
 *   tree_holder            read it and hold it here (run under `sh -c 'tree_holder; true'`: the shell's child)
 *   tree_holder --server   a parent and two workers; worker 2 alone reads and holds it; the parent never reads
 *   tree_holder --daemon   double fork with setsid in between; the daemon (the grandchild) reads and holds it,
 *                          the program itself waits on
 *
 * Each process says "<role> <pid>" on stdout before it reads, and "holding" once it holds the secret.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void say(const char *role) {
    char line[64];
    int n = snprintf(line, sizeof line, "%s %d\n", role, (int)getpid());
    if (write(1, line, (size_t)n) < 0) _exit(71);
}

/* Rename the process as servers do ("nginx: worker process"): /proc/PID/cmdline shows the new title. */
static void set_title(int argc, char **argv, const char *title) {
    char *end = argv[argc - 1] + strlen(argv[argc - 1]);
    memset(argv[0], 0, (size_t)(end - argv[0]));
    strncpy(argv[0], title, (size_t)(end - argv[0]));
}

static void hold_secret(void) {
    size_t cap = 4096, len = 0;
    char *secret = malloc(cap);
    if (!secret) _exit(70);
    while (len < cap) {
        ssize_t n = read(0, secret + len, 1);
        if (n <= 0 || secret[len] == '\n') break;
        len++;
    }
    if (len == 0) _exit(65);
    if (write(1, "holding\n", 8) < 0) _exit(71);
    for (;;) pause();
}

static void idle(void) {
    for (;;) pause();
}

int main(int argc, char **argv) {
    if (argc == 1) {
        say("holder");
        hold_secret();
    }
    if (!strcmp(argv[1], "--server")) {
        say("parent");
        for (int worker = 1; worker <= 2; worker++) {
            pid_t pid = fork();
            if (pid < 0) return 71;
            if (pid == 0) {
                set_title(argc, argv, worker == 1 ? "tree_holder: worker 1" : "tree_holder: worker 2");
                say(worker == 1 ? "worker1" : "worker2");
                if (worker == 2) hold_secret();
                idle();
            }
        }
        idle();
    }
    if (!strcmp(argv[1], "--daemon")) {
        say("parent");
        pid_t first = fork();
        if (first < 0) return 71;
        if (first == 0) {
            setsid();
            pid_t daemon = fork();
            if (daemon < 0) _exit(71);
            if (daemon == 0) {
                say("daemon");
                hold_secret();
            }
            _exit(0);
        }
        waitpid(first, NULL, 0);
        idle();
    }
    fprintf(stderr, "tree_holder: unknown argument %s\n", argv[1]);
    return 64;
}
