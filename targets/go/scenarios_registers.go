// secret.registers and secret.registers_nodo: work that leaves the key in
// general and vector registers, then a checkpoint where the thread blocks in
// read(2) (its registers saved by the kernel, written by gcore into the
// NT_PRSTATUS / NT_FPREGSET / NT_X86_XSTATE notes of that thread).
package main

import (
	"crypto/aes"
	"reflect"
	"remanence.dev/remanence"
	"runtime"
	"syscall"
	"unsafe"
)

func init() {
	register("secret.registers", func() { secretRegisters(true) })
	register("secret.registers_nodo", func() { secretRegisters(false) })
	register("secret.signal", func() { secretSignal(true) })
	register("secret.signal_nodo", func() { secretSignal(false) })
}

// blockSignals blocks every signal on the current thread and returns the
// old mask. A signal delivered to a thread makes the kernel write all its
// registers into a signal frame on the thread's signal stack (memory); Go's
// sysmon sends SIGURG (a preemption request) to a thread whose goroutine
// seems to run for more than 10 ms, which happens at random when the
// machine is busy and the OS descheduled the thread. secret.registers blocks
// signals so that its registers stay registers; secret.signal does the
// opposite on purpose.
func blockSignals() (old uint64) {
	all := ^uint64(0)
	if _, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, 0 /* SIG_BLOCK */, uintptr(unsafe.Pointer(&all)),
		uintptr(unsafe.Pointer(&old)), 8, 0, 0); e != 0 {
		remanence.Failf("rt_sigprocmask: %v", e)
	}
	return old
}

func restoreSignals(old uint64) {
	if _, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, 2 /* SIG_SETMASK */, uintptr(unsafe.Pointer(&old)),
		0, 8, 0, 0); e != 0 {
		remanence.Failf("rt_sigprocmask: %v", e)
	}
}

// needAESKey fails unless the secret can key AES (16 bytes or more).
func needAESKey(name string) int {
	n := remanence.SecretLen()
	if n < 16 {
		var scratch [16]byte
		remanence.ReadSecret(scratch[:n])
		wipe(scratch[:])
		remanence.Failf("%s needs a secret of at least 16 bytes (an AES key), got %d", name, n)
	}
	return n
}

// aesWork keys an AES cipher with key (crypto/aes: AES-NI on amd64, whose key
// expansion runs through the XMM registers), encrypts one block, then wipes
// the cipher's expanded key (it starts with the raw key) so that the only
// copies left are in registers.
func aesWork(key []byte) {
	block, err := aes.NewCipher(key)
	if err != nil {
		remanence.Failf("aes.NewCipher: %v", err)
	}
	var in, out [aes.BlockSize]byte
	block.Encrypt(out[:], in[:])
	remanence.Use(out[:])
	// crypto/aes has no way to wipe a cipher: zero the object behind the
	// interface (a pointer to a struct holding the round keys).
	v := reflect.ValueOf(block)
	if v.Kind() != reflect.Pointer {
		remanence.Failf("aes.NewCipher returned a %s, not a pointer", v.Kind())
	}
	wipe(unsafe.Slice((*byte)(v.UnsafePointer()), v.Type().Elem().Size()))
}

func aesKeyLen(n int) int {
	switch {
	case n >= 32:
		return 32
	case n >= 24:
		return 24
	}
	return 16
}

func secretRegisters(useDo bool) {
	// One goroutine, one thread: the thread that did the work is the one
	// that blocks at `after`.
	runtime.LockOSThread()
	growStack()
	n := needAESKey("secret.registers")
	var where uintptr
	var sets string
	mask := blockSignals()
	padded(func() {
		runDo(useDo, func() {
			var key [keyCap]byte
			k := key[:n]
			remanence.ReadSecret(k)
			remanence.Use(k)
			where = remanence.AddressOf(&key[0])
			remanence.Checkpoint("inside", where)
			aesWork(key[:aesKeyLen(n)])
			sets = loadRegisters(&key[0])
			// The memory copy goes; the registers keep theirs.
			wipe(key[:n])
		})
	})
	// Nothing between here and the blocking read of `continue` touches the
	// vector registers above X1 (the checkpoint line is built in a stack
	// buffer; notes, which go through fmt, come after).
	remanence.Checkpoint("after", where)
	restoreSignals(mask)
	remanence.Notef("register_sets=%s", sets)
}

// secret.signal: as secret.registers, but with the key loaded the thread
// sends itself a signal (SIGURG, Go's preemption signal, which its handler
// ignores when no preemption was requested): the kernel saves every
// register into a signal frame on the thread's signal stack. Do erases f's
// stack and the registers, not the signal stack; the runtime only marks the
// thread (m.signalSecret) and, at the next garbage collection's
// stop-the-world, sends it a no-op signal whose frame overwrites the old one.
// after: Do returned; after_gc: a runtime.GC() ran.
func secretSignal(useDo bool) {
	runtime.LockOSThread()
	growStack()
	n := needAESKey("secret.signal")
	pid, tid := syscall.Getpid(), syscall.Gettid()
	var where uintptr
	var sets string
	padded(func() {
		runDo(useDo, func() {
			var key [keyCap]byte
			k := key[:n]
			remanence.ReadSecret(k)
			remanence.Use(k)
			where = remanence.AddressOf(&key[0])
			remanence.Checkpoint("inside", where)
			sets = loadRegistersAndSignal(&key[0], pid, tid)
			wipe(key[:n])
		})
	})
	remanence.Checkpoint("after", where)
	runtime.GC()
	remanence.Checkpoint("after_gc", where)
	remanence.Notef("register_sets=%s", sets)
}
