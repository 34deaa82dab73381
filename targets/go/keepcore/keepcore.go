// Package keepcore keeps the core-dump limit the harness gave the process,
// for every scenario except memguard.* ones.
//
// Why: memguard's package init (github.com/awnumar/memguard/core) calls
// setrlimit(RLIMIT_CORE, {0, 0}). It runs in every process of this one-binary
// target, whatever the scenario, and without CAP_SYS_RESOURCE nobody can
// raise a hard limit of 0 again: no scenario could ever be snapshotted by a
// kernel core dump. For a scenario that is not about memguard, this package
// installs, before memguard's init runs, a seccomp filter under which a
// setrlimit/prlimit64 that sets RLIMIT_CORE returns 0 without doing anything.
// memguard.* scenarios keep memguard's real behaviour (core dumps disabled).
//
// Ordering: the Go spec initializes packages in import-path order among
// those whose imports are initialized. This package imports only os and
// syscall (both imported by memguard/core too) and its path
// (example.com/...) sorts before github.com/awnumar/memguard/core, so it is
// initialized first. tests/test_go_target.py checks the resulting limits.
package keepcore

import (
	"os"
	"strings"
	"syscall"
	"unsafe"
)

// Installed reports whether the filter is in place; Err why not, if it
// should have been.
var (
	Installed bool
	Err       error
)

const (
	prSetNoNewPrivs      = 38
	seccompSetModeFilter = 1
	seccompFilterTsync   = 1
	seccompRetAllow      = 0x7fff0000
	seccompRetErrno      = 0x00050000 // | errno; errno 0: "succeeds", does nothing
	rlimitCore           = 4

	bpfLdWAbs = 0x20 // BPF_LD | BPF_W | BPF_ABS
	bpfJeqK   = 0x15 // BPF_JMP | BPF_JEQ | BPF_K
	bpfRetK   = 0x06 // BPF_RET | BPF_K

	offNr   = 0
	offArch = 4
)

// argLo/argHi: offsets of the low and high 32 bits of args[i] in struct
// seccomp_data (little-endian).
func argLo(i uint32) uint32 { return 16 + 8*i }
func argHi(i uint32) uint32 { return 16 + 8*i + 4 }

type sockFilter struct {
	code uint16
	jt   uint8
	jf   uint8
	k    uint32
}

type sockFprog struct {
	len    uint16
	filter *sockFilter
}

func stmt(code uint16, k uint32) sockFilter { return sockFilter{code: code, k: k} }
func jeq(k uint32, jt, jf uint8) sockFilter { return sockFilter{code: bpfJeqK, jt: jt, jf: jf, k: k} }

// program: for the native arch, prlimit64(pid, RLIMIT_CORE, new != NULL,
// old) and setrlimit(RLIMIT_CORE, new) return 0 without doing anything;
// everything else is allowed. (jt/jf count from the next instruction.)
func program() []sockFilter {
	const (
		allow = 13
		skip  = 14
	)
	off := func(at, target int) uint8 { return uint8(target - (at + 1)) }
	return []sockFilter{
		0:  stmt(bpfLdWAbs, offArch),
		1:  jeq(auditArch, 0, off(1, allow)),
		2:  stmt(bpfLdWAbs, offNr),
		3:  jeq(sysPrlimit64, 0, off(3, 10)),
		4:  stmt(bpfLdWAbs, argLo(1)), // resource
		5:  jeq(rlimitCore, 0, off(5, allow)),
		6:  stmt(bpfLdWAbs, argLo(2)), // new limit pointer, low half
		7:  jeq(0, 0, off(7, skip)),
		8:  stmt(bpfLdWAbs, argHi(2)), // high half
		9:  jeq(0, off(9, allow), off(9, skip)),
		10: jeq(sysSetrlimit, 0, off(10, allow)),
		11: stmt(bpfLdWAbs, argLo(0)), // resource
		12: jeq(rlimitCore, off(12, skip), off(12, allow)),
		13: stmt(bpfRetK, seccompRetAllow),
		14: stmt(bpfRetK, seccompRetErrno|0),
	}
}

func install() error {
	if _, _, e := syscall.RawSyscall6(syscall.SYS_PRCTL, prSetNoNewPrivs, 1, 0, 0, 0, 0); e != 0 {
		return e
	}
	prog := program()
	fprog := sockFprog{len: uint16(len(prog)), filter: &prog[0]}
	// TSYNC: every thread of the process, the runtime's included.
	if r, _, e := syscall.RawSyscall(sysSeccomp, seccompSetModeFilter, seccompFilterTsync, uintptr(unsafe.Pointer(&fprog))); e != 0 {
		return e
	} else if r != 0 {
		return syscall.EAGAIN // a thread could not be synchronized
	}
	return nil
}

func init() {
	if len(os.Args) < 2 || strings.HasPrefix(os.Args[1], "memguard.") || os.Args[1] == "--list" {
		return
	}
	if Err = install(); Err == nil {
		Installed = true
	}
}
