// Vector and general-register loads for secret.registers (amd64).
//
// Each function loads the first 16 or 32 bytes at p into many registers and
// returns WITHOUT clearing them (no VZEROUPPER either): whatever the Go code
// after it does not overwrite stays there, and is saved by the kernel with
// the thread's state when it blocks in a system call. X15 and R14 (fixed by
// Go's internal ABI) and SP/BP are left alone.

#include "textflag.h"

// func loadAll(p *byte, avx, avx512 bool)
//
// General registers: R13 = p[0:8], R12 = p[8:16] (adjacent in the kernel's
// user_regs_struct: r15, r14, r13, r12, ..., so a 16-byte fragment in
// NT_PRSTATUS), R10 = p[16:24], R9 = p[24:32], BX = p[0:8], DX = p[8:16].
// SSE: X0..X14 = p[0:16]. AVX: Y0..Y14 = p[0:32] (overwrites the X ones with
// the same low half). AVX-512: Y16..Y31 (low halves of Z16..Z31) = p[0:32].
TEXT ·loadAll(SB), NOSPLIT, $0-10
	MOVQ	p+0(FP), AX
	MOVBQZX	avx+8(FP), CX
	MOVBQZX	avx512+9(FP), DX
	CALL	loadVector<>(SB)
	CALL	loadGeneral<>(SB)
	RET

// func loadAllAndSignal(p *byte, avx, avx512 bool, pid, tid int)
//
// loadAll, then tgkill(pid, tid, SIGURG) straight from here: the signal is
// delivered to this thread on the way back from the system call, with every
// register loaded, so the kernel writes them all into the signal frame on
// the thread's signal stack (Go's handler ignores an unrequested SIGURG).
TEXT ·loadAllAndSignal(SB), NOSPLIT, $0-32
	MOVQ	p+0(FP), AX
	MOVBQZX	avx+8(FP), CX
	MOVBQZX	avx512+9(FP), DX
	CALL	loadVector<>(SB)
	MOVQ	pid+16(FP), DI
	MOVQ	tid+24(FP), SI
	MOVQ	$23, DX		// SIGURG
	MOVQ	$234, AX	// SYS_tgkill
	SYSCALL
	MOVQ	p+0(FP), AX
	CALL	loadGeneral<>(SB)
	RET

// loadVector<>: AX = p, CX = avx, DX = avx512.
TEXT loadVector<>(SB), NOSPLIT|NOFRAME, $0-0
	MOVOU	(AX), X0
	MOVOU	(AX), X1
	MOVOU	(AX), X2
	MOVOU	(AX), X3
	MOVOU	(AX), X4
	MOVOU	(AX), X5
	MOVOU	(AX), X6
	MOVOU	(AX), X7
	MOVOU	(AX), X8
	MOVOU	(AX), X9
	MOVOU	(AX), X10
	MOVOU	(AX), X11
	MOVOU	(AX), X12
	MOVOU	(AX), X13
	MOVOU	(AX), X14
	CMPQ	CX, $0
	JEQ	done
	VMOVDQU	(AX), Y0
	VMOVDQU	(AX), Y1
	VMOVDQU	(AX), Y2
	VMOVDQU	(AX), Y3
	VMOVDQU	(AX), Y4
	VMOVDQU	(AX), Y5
	VMOVDQU	(AX), Y6
	VMOVDQU	(AX), Y7
	VMOVDQU	(AX), Y8
	VMOVDQU	(AX), Y9
	VMOVDQU	(AX), Y10
	VMOVDQU	(AX), Y11
	VMOVDQU	(AX), Y12
	VMOVDQU	(AX), Y13
	VMOVDQU	(AX), Y14
	CMPQ	DX, $0
	JEQ	done
	VMOVDQU64	(AX), Y16
	VMOVDQU64	(AX), Y17
	VMOVDQU64	(AX), Y18
	VMOVDQU64	(AX), Y19
	VMOVDQU64	(AX), Y20
	VMOVDQU64	(AX), Y21
	VMOVDQU64	(AX), Y22
	VMOVDQU64	(AX), Y23
	VMOVDQU64	(AX), Y24
	VMOVDQU64	(AX), Y25
	VMOVDQU64	(AX), Y26
	VMOVDQU64	(AX), Y27
	VMOVDQU64	(AX), Y28
	VMOVDQU64	(AX), Y29
	VMOVDQU64	(AX), Y30
	VMOVDQU64	(AX), Y31
done:
	RET

// loadGeneral<>: AX = p.
TEXT loadGeneral<>(SB), NOSPLIT|NOFRAME, $0-0
	MOVQ	0(AX), R13
	MOVQ	8(AX), R12
	MOVQ	16(AX), R10
	MOVQ	24(AX), R9
	MOVQ	0(AX), BX
	MOVQ	8(AX), DX
	RET
