/* A stand-in for a user's own program, written for tests/test_probe.py: it asks for a password the way
 * term.ReadPassword does (echo off on a terminal), keeps it in one heap buffer read with read(2) (no stdio
 * copy), holds it, works for a while, wipes it or not, then waits or exits.
 *
 *   askpass [--file PATH] [--hold-ms N] [--busy-ms N] [--no-wipe] [--exit] [--echo]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static void say(const char *text) {
    if (write(1, text, strlen(text)) < 0) _exit(71);
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0) {}
}

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    const char *file = NULL;
    long hold_ms = 0, busy_ms = 0;
    int wipe = 1, exit_at_end = 0, echo = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--file") && i + 1 < argc) file = argv[++i];
        else if (!strcmp(argv[i], "--hold-ms") && i + 1 < argc) hold_ms = atol(argv[++i]);
        else if (!strcmp(argv[i], "--busy-ms") && i + 1 < argc) busy_ms = atol(argv[++i]);
        else if (!strcmp(argv[i], "--no-wipe")) wipe = 0;
        else if (!strcmp(argv[i], "--exit")) exit_at_end = 1;
        else if (!strcmp(argv[i], "--echo")) echo = 1;
        else { fprintf(stderr, "askpass: unknown argument %s\n", argv[i]); return 64; }
    }
    size_t cap = 4096, len = 0;
    char *password = malloc(cap);
    if (!password) return 70;
    int fd = 0;
    if (file) {
        fd = open(file, O_RDONLY);
        if (fd < 0) { perror("askpass: open"); return 66; }
    } else {
        say("Password: ");
    }
    struct termios saved, quiet;
    int on_tty = !file && tcgetattr(0, &saved) == 0;
    if (on_tty && !echo) {
        quiet = saved;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        tcsetattr(0, TCSAFLUSH, &quiet);
    }
    while (len < cap) {
        ssize_t n = read(fd, password + len, 1);
        if (n <= 0 || password[len] == '\n') break;
        len++;
    }
    if (on_tty && !echo) tcsetattr(0, TCSAFLUSH, &saved);
    if (file) close(fd);
    if (len == 0) { say("\nno password\n"); return 65; }
    volatile unsigned sum = 0;
    for (size_t i = 0; i < len; i++) sum += (unsigned char)password[i];  /* "use" it */
    say("\nLogged in\n");
    if (hold_ms) { say("holding\n"); sleep_ms(hold_ms); }
    if (busy_ms) {
        say("busy\n");
        double until = now_ms() + busy_ms;
        while (now_ms() < until) sum += sum * 31u + 7u;
    }
    if (wipe) { explicit_bzero(password, cap); say("wiped\n"); }
    else say("kept\n");
    /* not freed: free() would overwrite its first 16 bytes with allocator pointers */
    if (exit_at_end) return 0;
    for (;;) pause();
}
