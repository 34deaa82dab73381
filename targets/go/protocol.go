// The conversation with the harness (see ../PROTOCOL.md).
//
// fd 3 carries both raw bytes (canary, secret) and ASCII control lines, so
// nothing here reads fd 3 through os.File, the netpoller or bufio: raw bytes
// are read with an exact-length syscall.Read loop straight into their final
// storage, and control lines are read one byte at a time, never past the
// '\n'. Nothing here prints, logs or echoes bytes read from fd 3 other than
// the fixed control words.
//
// The checkpoint path builds its line in a stack buffer (no heap allocation,
// no fmt) so that it disturbs the memory and registers under test as little
// as possible.
package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"unsafe"
)

const (
	exitOK            = 0
	exitUsage         = 64
	exitFailed        = 70
	exitChannelClosed = 75

	controlFD = 3
	secretMax = 4096
	canaryMax = 1 << 20
	lineMax   = 512
)

var (
	secretLength   int // REMANENCE_SECRET_LEN, set by main
	secretConsumed int // secret bytes read so far by the scenario

	// The canary: a plain heap buffer kept reachable and unwiped until the
	// process exits (a package-level variable is always live).
	canaryKeep []byte

	// Where use() leaves its checksum, so the reads cannot be dropped.
	useSink uint32
)

// channelClosed: the harness went away (EOF or an error on fd 3).
func channelClosed() {
	os.Stderr.WriteString("remanence-target-go: control channel closed\n")
	os.Exit(exitChannelClosed)
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

// ------------------------------------------------------------ public API

// secretLen is the secret length n (REMANENCE_SECRET_LEN, 1..4096).
func secretLen() int { return secretLength }

// claimSecret accounts for n secret bytes about to be read.
func claimSecret(n int) {
	if n > secretLength-secretConsumed {
		fail("scenario asked for %d secret bytes, only %d left", n, secretLength-secretConsumed)
	}
	secretConsumed += n
}

// readSecret reads exactly len(dst) secret bytes from fd 3 straight into dst.
func readSecret(dst []byte) {
	claimSecret(len(dst))
	readExact(dst)
}

// use "uses" a key: a byte-wise checksum the compiler cannot drop. It moves
// one byte at a time through a general register, never 16 bytes at once.
//
//go:noinline
func use(key []byte) {
	var sum uint32
	for _, b := range key {
		sum = sum*31 + uint32(b)
	}
	useSink = sum
}

// addrOf gives the address of a byte, for a checkpoint line.
func addrOf(p *byte) uintptr { return uintptr(unsafe.Pointer(p)) }

// checkpoint stops: sends `checkpoint <name> 0x<addr>` (or `-` for 0) and
// waits for `continue`.
func checkpoint(name string, addr uintptr) {
	if !validWord(name) {
		fail("invalid checkpoint name")
	}
	// Otherwise the unread secret bytes would be taken for a control line.
	if secretConsumed != secretLength {
		fail("checkpoint %s reached before the whole secret was read", name)
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
	sendAll(line)
	var reply [32]byte
	got, ok := readControlLine(reply[:])
	if !ok || string(got) != "continue" {
		fail("expected 'continue' after checkpoint %s", name)
	}
}

// note sends `note <text>` (key=value pairs; never the secret).
func note(format string, args ...any) {
	sendLine("note ", fmt.Sprintf(format, args...))
}

// fail sends `error <text>` and exits 70.
func fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	os.Stderr.WriteString("remanence-target-go: error: " + msg + "\n")
	sendLine("error ", msg)
	os.Exit(exitFailed)
}

// done ends the conversation (the target then exits 0, unless the scenario
// is about how the process ends).
func done() {
	if secretConsumed != secretLength {
		fail("scenario did not read the whole secret")
	}
	sendLine("done", "")
}
