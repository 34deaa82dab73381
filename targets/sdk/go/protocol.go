// Package remanence is the Go SDK for remanence targets: a test program that
// receives a secret from the remanence harness, keeps it the way the code under
// test does, and stops at named checkpoints where the harness snapshots its
// memory (the protocol is targets/PROTOCOL.md).
//
//	n := remanence.Start()                        // ready, canary; the secret's length
//	key := make([]byte, n)
//	remanence.ReadSecret(key)                     // straight into the caller's buffer
//	remanence.Checkpoint("in_use", remanence.AddressOf(&key[0]))
//	clear(key)
//	remanence.Checkpoint("after_wipe", remanence.AddressOf(&key[0]))
//	remanence.Done()                              // exits 0
//
// fd 3 carries both raw bytes (canary, secret) and ASCII control lines, so
// nothing here reads fd 3 through os.File, the netpoller or bufio: raw bytes
// are read with an exact-length syscall.Read loop straight into their final
// storage, and control lines are read one byte at a time, never past the
// '\n'. Nothing here prints, logs or echoes bytes read from fd 3 other than
// the fixed control words. The checkpoint path builds its line in a stack
// buffer (no heap allocation, no fmt) so that it disturbs the memory and
// registers under test as little as possible.
package remanence

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"unsafe"
)

// Exit codes of a target (targets/PROTOCOL.md).
const (
	ExitOK            = 0
	ExitUsage         = 64 // unknown or missing scenario name
	ExitFailed        = 70 // an `error` line was sent
	ExitChannelClosed = 75 // fd 3 closed early
)

// Limits of the protocol.
const (
	SecretMax  = 4096    // the longest secret (REMANENCE_SECRET_LEN)
	CanaryMax  = 1 << 20 // the longest canary (REMANENCE_CANARY_LEN)
	DerivedMax = 4096    // the longest derived value
)

const (
	controlFD = 3
	lineMax   = 512
	labelMax  = 64
)

var (
	started        bool
	secretLength   int // REMANENCE_SECRET_LEN, set by Start
	secretConsumed int // secret bytes read so far

	// The canary: a plain heap buffer kept reachable and unwiped until the
	// process exits (a package-level variable is always live).
	canaryKeep []byte

	// Where Use leaves its checksum, so the reads cannot be dropped.
	useSink uint32
)

// channelClosed: the harness went away (EOF or an error on fd 3).
func channelClosed() {
	os.Stderr.WriteString("remanence: control channel closed\n")
	os.Exit(ExitChannelClosed)
}

func sendAll(b []byte) {
	for len(b) > 0 {
		n, err := syscall.Write(controlFD, b)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			channelClosed() // EPIPE, ECONNRESET, EBADF, ...
		}
		b = b[n:]
	}
}

// sanitize replaces control characters so that a line stays one line.
func sanitize(b []byte) {
	for i, c := range b {
		if c < 0x20 || c == 0x7f {
			b[i] = '?'
		}
	}
}

// sendLine sends prefix+text+"\n", text cut to fit lineMax.
func sendLine(prefix, text string) {
	var buf [lineMax]byte
	line := append(buf[:0], prefix...)
	room := lineMax - 1 - len(line)
	if len(text) > room {
		text = text[:room]
	}
	line = append(line, text...)
	sanitize(line)
	line = append(line, '\n')
	sendAll(line)
}

// readExact reads exactly len(dst) bytes from fd 3 into dst; EOF exits 75.
func readExact(dst []byte) {
	for len(dst) > 0 {
		n, err := syscall.Read(controlFD, dst)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			channelClosed()
		}
		dst = dst[n:]
	}
}

// readControlLine reads one line (without '\n') byte by byte into buf: never
// consumes a byte past the newline. ok is false if the line is too long or
// not printable ASCII (its content is never echoed anywhere).
func readControlLine(buf []byte) (line []byte, ok bool) {
	var c [1]byte
	n, bad := 0, false
	for {
		r, err := syscall.Read(controlFD, c[:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil || r <= 0 {
			channelClosed()
		}
		if c[0] == '\n' {
			break
		}
		if c[0] < 0x20 || c[0] > 0x7e {
			bad = true
		}
		if n < len(buf) {
			buf[n] = c[0]
			n++
		} else {
			bad = true
		}
	}
	return buf[:n], !bad
}

// validWord: a scenario or checkpoint name, [A-Za-z0-9._-]+.
func validWord(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// validLabel: a derived value's label, [a-z0-9_]{1,64}.
func validLabel(s string) bool {
	if s == "" || len(s) > labelMax {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// envSize parses a decimal environment variable in [lo, hi].
func envSize(name string, lo, hi int) (int, bool) {
	s, found := syscall.Getenv(name)
	if !found || s == "" {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < lo || v > hi {
		return 0, false
	}
	return v, true
}

// mustHaveStarted: calling the SDK out of order is a bug in the test program.
func mustHaveStarted(what string) {
	if !started {
		panic("remanence: " + what + " called before Start")
	}
}

// ------------------------------------------------------------ public API

// Start begins the conversation: it checks that fd 3 is open (else exit 75),
// sends `ready 1`, checks the REMANENCE_* variables (bad ones: an `error`
// line, exit 70), reads the canary into a heap buffer that stays live until
// the process exits, and returns the secret's length (1..SecretMax). Call it
// once, before anything else of this package.
func Start() int {
	if started {
		Fail("Start called twice")
	}
	// Go ignores SIGPIPE on fds other than 1 and 2, so a vanished harness
	// shows up as a write error (exit 75), not a signal.
	if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, controlFD, syscall.F_GETFD, 0); errno != 0 {
		channelClosed()
	}
	started = true
	sendLine("ready ", "1")

	if proto, found := syscall.Getenv("REMANENCE_PROTOCOL"); found && proto != "1" {
		Fail("unsupported REMANENCE_PROTOCOL (this SDK speaks 1)")
	}
	n, ok := envSize("REMANENCE_SECRET_LEN", 1, SecretMax)
	if !ok {
		Failf("REMANENCE_SECRET_LEN must be an integer in 1..%d", SecretMax)
	}
	m, ok := envSize("REMANENCE_CANARY_LEN", 1, CanaryMax)
	if !ok {
		Failf("REMANENCE_CANARY_LEN must be an integer in 1..%d", CanaryMax)
	}
	secretLength = n
	canaryKeep = make([]byte, m)
	readExact(canaryKeep)
	return n
}

// SecretLen is the secret's length, as Start returned it.
func SecretLen() int {
	mustHaveStarted("SecretLen")
	return secretLength
}

// ReadSecret reads exactly len(dst) secret bytes from fd 3 straight into dst
// (e.g. a memguard LockedBuffer's Bytes()): no intermediate buffer. The secret
// may be read in several parts; all of it must be read before the first
// checkpoint (asking for more than is left: an `error` line, exit 70).
func ReadSecret(dst []byte) {
	mustHaveStarted("ReadSecret")
	if len(dst) > secretLength-secretConsumed {
		Failf("asked for %d secret bytes, only %d left", len(dst), secretLength-secretConsumed)
	}
	secretConsumed += len(dst)
	readExact(dst)
}

// Use "uses" a key: a byte-wise checksum the compiler cannot drop. It moves
// one byte at a time through a general register, never 16 bytes at once.
//
//go:noinline
func Use(key []byte) {
	var sum uint32
	for _, b := range key {
		sum = sum*31 + uint32(b)
	}
	useSink = sum
}

// AddressOf gives the address of *p for Checkpoint, e.g. AddressOf(&key[0]).
// An address is a plain number: it does not keep the memory alive.
func AddressOf[T any](p *T) uintptr { return uintptr(unsafe.Pointer(p)) }

// Checkpoint stops at a checkpoint: sends `checkpoint <name> 0x<addr>` (`-`
// for addr 0: no address) and waits until the harness has taken its
// snapshots (`continue`). addr is where the secret is kept, or was kept
// before a wipe: a uintptr, so that reporting an address never keeps freed
// memory reachable. The checkpoints must come in the order the scenario file
// lists them.
func Checkpoint(name string, addr uintptr) {
	mustHaveStarted("Checkpoint")
	if !validWord(name) {
		Fail("invalid checkpoint name")
	}
	// Otherwise the unread secret bytes would be taken for a control line.
	if secretConsumed != secretLength {
		Failf("checkpoint %s reached before the whole secret was read", name)
	}
	var buf [lineMax]byte
	line := append(buf[:0], "checkpoint "...)
	line = append(line, name...)
	if addr == 0 {
		line = append(line, " -"...)
	} else {
		line = append(line, " 0x"...)
		line = strconv.AppendUint(line, uint64(addr), 16)
	}
	line = append(line, '\n')
	var reply [32]byte
	for {
		sendAll(line)
		got, ok := readControlLine(reply[:])
		if ok && string(got) == "collect" {
			// A full collection, then the same checkpoint again.
			runtime.GC()
			continue
		}
		if !ok || string(got) != "continue" {
			Failf("expected 'continue' after checkpoint %s", name)
		}
		return
	}
}

// Note sends `note <text>`: facts worth recording, as key=value pairs
// separated by spaces (e.g. "mlock=denied errno=1"). Never the secret.
func Note(text string) {
	mustHaveStarted("Note")
	sendLine("note ", text)
}

// Notef is Note with fmt.Sprintf formatting.
func Notef(format string, args ...any) { Note(fmt.Sprintf(format, args...)) }

// Derived sends a value computed from the secret (a session key, a subkey)
// that the harness must look for too: `derived <label> <n>`, then the bytes.
// label is [a-z0-9_]{1,64}; value is 1..DerivedMax bytes. Send it once,
// before the first checkpoint whose scenario file has an expectation for it.
func Derived(label string, value []byte) {
	mustHaveStarted("Derived")
	if !validLabel(label) {
		Fail("invalid derived label (must be [a-z0-9_]{1,64})")
	}
	if len(value) < 1 || len(value) > DerivedMax {
		Failf("derived value %s has %d bytes (must be 1..%d)", label, len(value), DerivedMax)
	}
	var buf [lineMax]byte
	line := append(buf[:0], "derived "...)
	line = append(line, label...)
	line = append(line, ' ')
	line = strconv.AppendInt(line, int64(len(value)), 10)
	line = append(line, '\n')
	sendAll(line)
	sendAll(value)
}

// Finish sends `done` and returns, for a program that then ends the process
// itself (memguard.SafeExit, a signal): the harness takes its `exit` snapshot
// at the process's end. Most programs call Done instead.
func Finish() {
	mustHaveStarted("Finish")
	if secretConsumed != secretLength {
		Failf("the program did not read the whole secret (%d of %d bytes)", secretConsumed, secretLength)
	}
	sendLine("done", "")
}

// Done sends `done` and exits 0.
func Done() {
	Finish()
	os.Exit(ExitOK)
}

// Fail sends `error <msg>` (also written to stderr) and exits 70: the program
// could not do what its scenario claims. msg must not contain the secret.
func Fail(msg string) {
	os.Stderr.WriteString("remanence: error: " + msg + "\n")
	if started {
		sendLine("error ", msg)
	}
	os.Exit(ExitFailed)
}

// Failf is Fail with fmt.Sprintf formatting.
func Failf(format string, args ...any) { Fail(fmt.Sprintf(format, args...)) }
