/* The seed of the core-file fuzz tests (tests/test_fuzz_cores.py): maps the file named by argv[1] (so the core's
 * NT_FILE note names two files), reads 32 bytes from stdin into a buffer on its stack (beside argv[0], the
 * control), says "ready" and sleeps.
 * No libc (raw x86-64 system calls), so a gcore of it is under 200 KiB. */
static long sys(long number, long a, long b, long c, long d, long e, long f) {
    register long r10 __asm__("r10") = d, r8 __asm__("r8") = e, r9 __asm__("r9") = f;
    long result;
    __asm__ volatile ("syscall" : "=a"(result) : "a"(number), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                      : "rcx", "r11", "memory");
    return result;
}

/* The kernel starts us with argc, argv[] on the stack: hand its address to C, on an aligned stack. */
__asm__(".global _start\n_start:\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall start\n");

void start(long *initial_stack) {
    char **argv = (char **)(initial_stack + 1);
    char held[32];
    long fd = sys(2 /* open */, (long)argv[1], 0 /* O_RDONLY */, 0, 0, 0, 0);
    if (fd < 0 || sys(9 /* mmap */, 0, 4096, 1 /* PROT_READ */, 2 /* MAP_PRIVATE */, fd, 0) < 0)
        sys(60 /* exit */, 2, 0, 0, 0, 0, 0);
    long got = 0;
    while (got < (long)sizeof held) {
        long n = sys(0 /* read */, 0, (long)held + got, sizeof held - got, 0, 0, 0);
        if (n <= 0)
            sys(60 /* exit */, 1, 0, 0, 0, 0, 0);
        got += n;
    }
    sys(1 /* write */, 1, (long)"ready\n", 6, 0, 0, 0);
    for (;;)
        sys(34 /* pause */, 0, 0, 0, 0, 0, 0);
}
