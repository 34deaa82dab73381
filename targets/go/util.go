// Helpers shared by the scenarios: stack layout, secret.Do or not, and a
// garbage collection that has provably freed an object.
package main

import (
	"remanence.dev/remanence"
	"runtime"
	"runtime/secret"
	"time"
	"weak"
)

// keyCap is the size of the stack arrays scenarios keep the key in: any
// secret the protocol allows fits.
const keyCap = remanence.SecretMax

// padBytes separates a scenario's checkpoints from the frames that held the
// key (see padded).
const padBytes = 16 << 10

var padSink byte

//go:noinline
func touchPad(p *[padBytes]byte) { padSink ^= p[0] ^ p[len(p)-1] }

// padded calls fn 16 KiB deeper than its caller. Layout (the stack grows
// down):
//
//	scenario function        <- later calls (checkpoint, write, ...) reuse
//	padded: 16 KiB pad          the stack from here down, i.e. they
//	fn ... key frame            overwrite the pad first
//
// Without it, the calls a scenario makes after fn returns would land on the
// dead frames and could overwrite a stale key by accident, hiding a real leak
// (or a wipe that never happened).
//
//go:noinline
func padded(fn func()) {
	var pad [padBytes]byte
	touchPad(&pad)
	fn()
	touchPad(&pad)
}

// growStack makes the current goroutine's stack at least 256 KiB (Go stacks
// start at 8 KiB and double when a call needs more). Scenarios call it first
// so that their own frames never trigger a stack copy: a copy would move the
// key (the checkpoint address would go stale) and free the old stack. Only
// secret.stack_growth wants that, on purpose. With automatic GC off (main)
// nothing shrinks the stack again unless a scenario runs runtime.GC().
func growStack() { growBy(192) }

var growSink byte

//go:noinline
func growBy(kib int) byte {
	var pad [1024]byte
	pad[kib%len(pad)] = byte(kib)
	if kib > 1 {
		pad[0] ^= growBy(kib - 1)
	}
	growSink ^= pad[0]
	return pad[kib%len(pad)]
}

// runDo runs f inside secret.Do, or directly for a _nodo twin.
func runDo(useDo bool, f func()) {
	if useDo {
		secret.Do(f)
	} else {
		f()
	}
}

// catch runs fn and returns the value of any panic it raised (recovered).
func catch(fn func()) (r any) {
	defer func() { r = recover() }()
	fn()
	return nil
}

// maxCollections bounds the garbage collections collect runs.
const maxCollections = 20

// collect runs full garbage collections until the object wp points to has
// been freed (its weak pointer reads nil), and returns how many it took.
// runtime.GC returns only after the sweep, and the sweep is what clears weak
// pointers and zeroes objects allocated inside secret.Do, so once wp is nil
// the object's memory has been dealt with.
func collect[T any](wp weak.Pointer[T], what string) int {
	for i := 1; i <= maxCollections; i++ {
		runtime.GC()
		if wp.Value() == nil {
			return i
		}
	}
	remanence.Failf("%s was still reachable after %d garbage collections", what, maxCollections)
	return 0
}

// waitGoroutines waits until at most n goroutines exist: a goroutine that
// signalled its end (close in a defer) is only gone, its stack dealt with,
// once the runtime has destroyed it.
func waitGoroutines(n int) {
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			remanence.Failf("goroutine did not end: %d goroutines, expected %d", runtime.NumGoroutine(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// wipe zeroes b; a separate function the compiler cannot drop as a dead
// store.
//
//go:noinline
func wipe(b []byte) {
	clear(b)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
