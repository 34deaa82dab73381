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

	"github.com/awnumar/memguard"
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
