// memguard expected crashes: memguard.overflow (one byte written past the end
// of a LockedBuffer through unsafe: the guard page), memguard.underflow (one
// byte written before its start, into the canary, then Destroy: the canary
// check panics), memguard.frozen_write (a write after Freeze: the data pages
// are read-only), each with a twin that does the legal thing (the last byte;
// no stray write; a write after Melt) and must not crash.
//
// Each crash scenario announces its last checkpoint right before the illegal
// act. The fault is not a Go panic: the runtime reports "unexpected fault
// address" and, under GOTRACEBACK=crash, dies by SIGABRT.
package main

import (
	"remanence.dev/remanence"
	"unsafe"
)

func init() {
	register("memguard.overflow", memguardOverflow)
	register("memguard.overflow.in_bounds", memguardOverflowInBounds)
	register("memguard.underflow", memguardUnderflow)
	register("memguard.underflow.intact", memguardUnderflowIntact)
	register("memguard.frozen_write", memguardFrozenWrite)
	register("memguard.frozen_write.melted", memguardFrozenWriteMelted)
}

//go:noinline
func flipAt(base *byte, offset int) {
	p := (*byte)(unsafe.Add(unsafe.Pointer(base), offset))
	*p ^= 0x5a
}

func memguardOverflow() {
	buf, where := lockedKey()
	remanence.Checkpoint("in_use", where)
	remanence.Checkpoint("past_end", where)
	flipAt(&buf.Bytes()[0], buf.Size())
	remanence.Failf("a write one byte past the end of a LockedBuffer did not crash")
}

func memguardOverflowInBounds() {
	buf, where := lockedKey()
	remanence.Checkpoint("in_use", where)
	flipAt(&buf.Bytes()[0], buf.Size()-1)
	flipAt(&buf.Bytes()[0], buf.Size()-1) // twice: the key is whole again
	remanence.Checkpoint("last_byte", where)
	buf.Destroy()
}

func memguardUnderflow() {
	buf, where := lockedKey()
	remanence.Checkpoint("in_use", where)
	remanence.Checkpoint("destroy", where)
	flipAt(&buf.Bytes()[0], -1) // the canary's last byte, right before the data
	buf.Destroy()
	remanence.Failf("Destroy of a LockedBuffer whose canary was overwritten did not crash")
}

func memguardUnderflowIntact() {
	buf, where := lockedKey()
	remanence.Checkpoint("in_use", where)
	buf.Destroy()
	remanence.Checkpoint("destroyed", where)
}

func memguardFrozenWrite() {
	buf, where := lockedKey()
	remanence.Checkpoint("in_use", where)
	buf.Freeze()
	remanence.Checkpoint("write", where)
	flipAt(&buf.Bytes()[0], 0)
	remanence.Failf("a write to a frozen LockedBuffer did not crash")
}

func memguardFrozenWriteMelted() {
	buf, where := lockedKey()
	remanence.Checkpoint("in_use", where)
	buf.Freeze()
	buf.Melt()
	flipAt(&buf.Bytes()[0], 0)
	flipAt(&buf.Bytes()[0], 0)
	remanence.Checkpoint("written", where)
	buf.Destroy()
}
