// memguard scenarios (github.com/awnumar/memguard): memguard.*.
//
// A LockedBuffer is an mmap region of its own: guard page, data pages
// (mlock'ed, MADV_DONTDUMP), guard page; the data sits at the end of the data
// pages. The secret is read straight into buf.Bytes().
package main

import (
	"os"
	"remanence.dev/remanence"
	"runtime"
	"runtime/secret"
	"syscall"
	"time"
	"unsafe"
	"weak"

	"github.com/awnumar/memguard"
	"github.com/awnumar/memguard/core"
)

func init() {
	register("memguard.locked_live", memguardLockedLive)
	register("memguard.destroyed", memguardDestroyed)
	register("memguard.enclave", memguardEnclave)
	register("memguard.enclave_open", memguardEnclaveOpen)
	register("memguard.string_copy", memguardStringCopy)
	register("memguard.purge", memguardPurge)
	register("memguard.safe_exit", memguardSafeExit)
	register("memguard.interrupt", memguardInterrupt)
	register("memguard.with_secret_do", memguardWithSecretDo)
	register("memguard.finalizer", memguardFinalizer)
	register("memguard.finalizer_cleanup", memguardFinalizerCleanup)
	register("memguard.from_bytes", memguardFromBytes)
	register("memguard.from_bytes_copy", memguardFromBytesCopy)
}

// lockedKey: a LockedBuffer holding the secret, read straight into it.
func lockedKey() (*memguard.LockedBuffer, uintptr) {
	buf := memguard.NewBuffer(remanence.SecretLen())
	if !buf.IsAlive() {
		remanence.Failf("memguard.NewBuffer(%d) returned a dead buffer", remanence.SecretLen())
	}
	remanence.ReadSecret(buf.Bytes())
	remanence.Use(buf.Bytes())
	return buf, remanence.AddressOf(&buf.Bytes()[0])
}

func memguardLockedLive() {
	buf, where := lockedKey()
	remanence.Checkpoint("in_use", where)
	buf.Destroy()
}

func memguardDestroyed() {
	buf, where := lockedKey()
	remanence.Checkpoint("in_use", where)
	buf.Destroy()
	remanence.Checkpoint("destroyed", where)
}

// memguard.enclave: the key loaded into a LockedBuffer (positive control),
// then sealed: only the Enclave (ciphertext on the Go heap) is held.
func memguardEnclave() {
	growStack()
	var enclave *memguard.Enclave
	var where uintptr
	padded(func() {
		var buf *memguard.LockedBuffer
		buf, where = lockedKey()
		remanence.Checkpoint("loaded", where)
		enclave = buf.Seal() // destroys buf
	})
	remanence.Checkpoint("sealed", where)
	runtime.KeepAlive(enclave)
}

// sealedKey: an Enclave made from the secret (read into a LockedBuffer,
// sealed; the buffer is destroyed by Seal).
func sealedKey() *memguard.Enclave {
	buf, _ := lockedKey()
	return buf.Seal()
}

// memguard.enclave_open: the Enclave opened into a new LockedBuffer and not
// destroyed (open), then destroyed (destroyed).
func memguardEnclaveOpen() {
	growStack()
	var where uintptr
	var enclave *memguard.Enclave
	padded(func() {
		enclave = sealedKey()
		buf, err := enclave.Open()
		if err != nil {
			remanence.Failf("Enclave.Open: %v", err)
		}
		remanence.Use(buf.Bytes())
		where = remanence.AddressOf(&buf.Bytes()[0])
		remanence.Checkpoint("open", where)
		buf.Destroy()
	})
	remanence.Checkpoint("destroyed", where)
	runtime.KeepAlive(enclave)
}

// memguard.string_copy: string(buf.Bytes()) puts a copy on the Go heap,
// kept alive; the LockedBuffer is then destroyed, the string is not.
func memguardStringCopy() {
	buf, where := lockedKey()
	s := string(buf.Bytes())
	remanence.Checkpoint("in_use", where)
	buf.Destroy()
	remanence.Checkpoint("destroyed", remanence.AddressOf(unsafe.StringData(s)))
	remanence.Use(unsafe.Slice(unsafe.StringData(s), len(s)))
}

// memguard.purge: memguard.Purge destroys every LockedBuffer.
func memguardPurge() {
	buf, where := lockedKey()
	remanence.Checkpoint("in_use", where)
	memguard.Purge()
	if buf.IsAlive() {
		remanence.Fail("the buffer is still alive after memguard.Purge")
	}
	remanence.Checkpoint("purged", where)
}

// memguard.safe_exit: checkpoint, `done`, then memguard.SafeExit(0) ends the
// process (it destroys every LockedBuffer and the enclave key, then
// os.Exit(0)).
func memguardSafeExit() {
	_, where := lockedKey()
	remanence.Checkpoint("in_use", where)
	remanence.Finish()
	memguard.SafeExit(0)
	os.Stderr.WriteString("remanence-target-go: memguard.SafeExit returned\n")
	os.Exit(remanence.ExitFailed)
}

// memguard.interrupt: memguard.CatchInterrupt armed, checkpoint, `done`,
// then SIGINT to itself: memguard's handler goroutine destroys every
// LockedBuffer and the enclave key, then exits with status 1.
func memguardInterrupt() {
	memguard.CatchInterrupt()
	// memguard v0.23.0's handler goroutine starts with a nil handler and takes
	// the real one from a channel: a signal that reaches it first calls nil and
	// the process dies in a panic, wiping nothing (1 run in about 250 here,
	// under load). A second call returns only once the goroutine has taken the
	// first handler, since the channel holds one.
	memguard.CatchInterrupt()
	_, where := lockedKey()
	remanence.Checkpoint("in_use", where)
	remanence.Finish()
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		os.Stderr.WriteString("remanence-target-go: kill(SIGINT) failed: " + err.Error() + "\n")
		os.Exit(remanence.ExitFailed)
	}
	time.Sleep(10 * time.Second)
	os.Stderr.WriteString("remanence-target-go: memguard's interrupt handler did not end the process\n")
	os.Exit(remanence.ExitFailed)
}

// memguard.with_secret_do: the combination recommended in practice. The key
// arrives inside secret.Do straight into a LockedBuffer (loaded) and is
// sealed there; only the Enclave is kept (sealed). A second secret.Do opens
// it, uses it (inside) and destroys the buffer before f returns (after).
func memguardWithSecretDo() {
	growStack()
	var enclave *memguard.Enclave
	var where uintptr
	padded(func() {
		secret.Do(func() {
			buf, addr := lockedKey()
			remanence.Checkpoint("loaded", addr)
			enclave = buf.Seal()
		})
	})
	remanence.Checkpoint("sealed", 0)
	padded(func() {
		secret.Do(func() {
			buf, err := enclave.Open()
			if err != nil {
				remanence.Failf("Enclave.Open: %v", err)
			}
			remanence.Use(buf.Bytes())
			where = remanence.AddressOf(&buf.Bytes()[0])
			remanence.Checkpoint("inside", where)
			buf.Destroy()
		})
	})
	remanence.Checkpoint("after", where)
	runtime.KeepAlive(enclave)
}

// dataMapped reports whether the page holding addr is mapped: mincore fails
// with ENOMEM on an unmapped page. Only an address is needed, so asking does
// not keep a dropped buffer reachable.
func dataMapped(addr uintptr) bool {
	pageSize := uintptr(os.Getpagesize())
	var vec [1]byte
	_, _, e := syscall.RawSyscall(syscall.SYS_MINCORE, addr&^(pageSize-1), pageSize, uintptr(unsafe.Pointer(&vec[0])))
	switch e {
	case 0:
		return true
	case syscall.ENOMEM:
		return false
	}
	remanence.Failf("mincore: %v", e)
	return false
}

// dropLockedKey: a LockedBuffer holding the key (in_use), handed to
// beforeDrop, then dropped without Destroy. Only a weak pointer and the
// data's address come back: nothing keeps the buffer reachable.
//
//go:noinline
func dropLockedKey(beforeDrop func(*memguard.LockedBuffer)) (weak.Pointer[memguard.LockedBuffer], uintptr) {
	buf, where := lockedKey()
	remanence.Checkpoint("in_use", where)
	beforeDrop(buf)
	return weak.Make(buf), where
}

// awaitDropped runs garbage collections until the dropped LockedBuffer has
// been freed, waits until done is closed (by a finalizer or cleanup that the
// same collection queued), and notes the cycles and whether the buffer's
// data pages are still mapped.
func awaitDropped(wp weak.Pointer[memguard.LockedBuffer], where uintptr, done chan struct{}) {
	cycles := collect(wp, "the dropped LockedBuffer")
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		remanence.Fail("the finalizer queued by the collection did not run within 10 s")
	}
	remanence.Notef("gc_cycles=%d data_mapped=%t", cycles, dataMapped(where))
}

// finalizerSentinel is dropped with the buffer in memguard.finalizer; its
// finalizer having run means the finalizers that collection queued have
// run, memguard's own if it had one. (Pointer-free and 32 bytes: not in a
// tiny-allocator block shared with other objects.)
type finalizerSentinel [32]byte

// memguard.finalizer: a LockedBuffer dropped without Destroy, then garbage
// collected. memguard v0.23.0 registers no finalizer (its PR #157 removed
// it; the comment on newBuffer still mentions one), and core's list of
// buffers keeps the core.Buffer reachable: the region stays mapped and
// locked, with the key, until Destroy, Purge or exit.
func memguardFinalizer() {
	growStack()
	var wp weak.Pointer[memguard.LockedBuffer]
	var where uintptr
	done := make(chan struct{})
	padded(func() {
		wp, where = dropLockedKey(func(*memguard.LockedBuffer) {
			runtime.SetFinalizer(new(finalizerSentinel), func(*finalizerSentinel) { close(done) })
		})
	})
	awaitDropped(wp, where, done)
	remanence.Checkpoint("collected", where)
}

// memguard.finalizer_cleanup: the same, with the cleanup a program has to
// add itself: runtime.AddCleanup on the LockedBuffer destroys its
// core.Buffer (passed as the argument: the LockedBuffer must not be
// reachable from the cleanup) once the LockedBuffer is unreachable.
func memguardFinalizerCleanup() {
	growStack()
	var wp weak.Pointer[memguard.LockedBuffer]
	var where uintptr
	destroyed := make(chan struct{})
	padded(func() {
		wp, where = dropLockedKey(func(buf *memguard.LockedBuffer) {
			runtime.AddCleanup(buf, func(b *core.Buffer) { b.Destroy(); close(destroyed) }, buf.Buffer)
		})
	})
	awaitDropped(wp, where, destroyed)
	remanence.Checkpoint("collected", where)
}

// plainKey: the key read into a plain heap slice (announced at read).
func plainKey() []byte {
	src := make([]byte, remanence.SecretLen())
	remanence.ReadSecret(src)
	remanence.Use(src)
	remanence.Checkpoint("read", remanence.AddressOf(&src[0]))
	return src
}

// memguard.from_bytes: NewBufferFromBytes(src) moves the key into a frozen
// LockedBuffer and wipes src, byte by byte (moved; note src_wiped). A plain
// copy of the buffer's bytes is made (plain_copy) and wiped with
// memguard.WipeBytes (wiped); then the buffer is destroyed (destroyed).
func memguardFromBytes() {
	src := plainKey()
	buf := memguard.NewBufferFromBytes(src)
	if !buf.IsAlive() {
		remanence.Failf("memguard.NewBufferFromBytes(%d bytes) returned a dead buffer", len(src))
	}
	remanence.Notef("src_wiped=%t", allZero(src))
	where := remanence.AddressOf(&buf.Bytes()[0])
	remanence.Checkpoint("moved", where)
	// Byte by byte: the builtin copy's memmove would leave the key in vector
	// registers, which gcore dumps (see secret.registers_nodo), whatever
	// WipeBytes does to the memory.
	plain := make([]byte, buf.Size())
	for i, b := range buf.Bytes() {
		plain[i] = b
	}
	remanence.Use(plain)
	remanence.Checkpoint("plain_copy", remanence.AddressOf(&plain[0]))
	memguard.WipeBytes(plain)
	remanence.Checkpoint("wiped", remanence.AddressOf(&plain[0]))
	buf.Destroy()
	remanence.Checkpoint("destroyed", where)
	runtime.KeepAlive(src)
	runtime.KeepAlive(plain)
}

// memguard.from_bytes_copy: the key copied into a LockedBuffer with the
// builtin copy (copied): src is not wiped, and outlives the buffer's
// Destroy (destroyed; address: src).
func memguardFromBytesCopy() {
	src := plainKey()
	buf := memguard.NewBuffer(len(src))
	if !buf.IsAlive() {
		remanence.Failf("memguard.NewBuffer(%d) returned a dead buffer", len(src))
	}
	copy(buf.Bytes(), src)
	remanence.Checkpoint("copied", remanence.AddressOf(&buf.Bytes()[0]))
	buf.Destroy()
	remanence.Checkpoint("destroyed", remanence.AddressOf(&src[0]))
	runtime.KeepAlive(src)
}
