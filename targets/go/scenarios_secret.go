// runtime/secret scenarios (GOEXPERIMENT=runtimesecret): secret.*.
//
// Each scenario that has one registers a `<name>_nodo` twin running the very
// same code without secret.Do, as the control (secret.none is the twin of
// secret.return).
package main

import (
	"remanence.dev/remanence"
	"runtime"
	"runtime/secret"
	"unsafe"
	"weak"
)

func init() {
	register("secret.none", func() { secretReturn(false) })
	register("secret.return", func() { secretReturn(true) })
	register("secret.panic", func() { secretPanic(true) })
	register("secret.panic_nodo", func() { secretPanic(false) })
	register("secret.panic_value", func() { secretPanicValue(true) })
	register("secret.panic_value_nodo", func() { secretPanicValue(false) })
	register("secret.goexit", func() { secretGoexit(true) })
	register("secret.goexit_nodo", func() { secretGoexit(false) })
	register("secret.heap", func() { secretHeap(true) })
	register("secret.heap_nodo", func() { secretHeap(false) })
	register("secret.map", func() { secretMap(true) })
	register("secret.map_nodo", func() { secretMap(false) })
	register("secret.keepalive", func() { secretKeepalive(true) })
	register("secret.keepalive_nodo", func() { secretKeepalive(false) })
	register("secret.escape", secretEscape)
	register("secret.global", secretGlobal)
	register("secret.goroutine", secretGoroutine)
	register("secret.stack_growth", func() { secretStackGrowth(true) })
	register("secret.stack_growth_nodo", func() { secretStackGrowth(false) })
}

// stackKeyInside is the body most scenarios share: the key in a local array
// of f, read straight into it, used, checkpoint `inside` (the positive
// control). It returns the key's address.
//
//go:noinline
func stackKeyInside() uintptr {
	var key [keyCap]byte
	k := key[:remanence.SecretLen()]
	remanence.ReadSecret(k)
	remanence.Use(k)
	where := remanence.AddressOf(&key[0])
	remanence.Checkpoint("inside", where)
	return where
}

// secret.return / secret.none: the key on f's stack; f returns normally.
func secretReturn(useDo bool) {
	growStack()
	var where uintptr
	padded(func() {
		runDo(useDo, func() { where = stackKeyInside() })
	})
	remanence.Checkpoint("after", where)
}

// errPlain is the panic value of secret.panic: a package-level value, so the
// panic itself allocates nothing and carries nothing of the key.
var errPlain = &plainError{"scenario panic"}

type plainError struct{ s string }

func (e *plainError) Error() string { return e.s }

// secret.panic: f panics (a plain value), the caller of Do recovers.
func secretPanic(useDo bool) {
	growStack()
	var where uintptr
	padded(func() {
		r := catch(func() {
			runDo(useDo, func() {
				where = stackKeyInside()
				panic(errPlain)
			})
		})
		if r != any(errPlain) {
			remanence.Failf("expected the scenario's panic to reach the caller, recovered %v", r)
		}
	})
	remanence.Checkpoint("after", where)
}

// panicBox is a panic value holding the key.
type panicBox struct{ key []byte }

// secret.panic_value: the panic value itself holds the key (a heap buffer
// allocated in f). Checkpoints while the recovered value is alive, and once
// it is dropped and a garbage collection has provably freed the buffer.
func secretPanicValue(useDo bool) {
	growStack()
	var where uintptr
	var wp weak.Pointer[byte]
	var r any
	padded(func() {
		r = catch(func() {
			runDo(useDo, func() {
				key := make([]byte, remanence.SecretLen())
				remanence.ReadSecret(key)
				remanence.Use(key)
				where, wp = remanence.AddressOf(&key[0]), weak.Make(&key[0])
				remanence.Checkpoint("inside", where)
				panic(&panicBox{key})
			})
		})
	})
	v, ok := r.(*panicBox)
	if !ok {
		remanence.Failf("expected a *panicBox panic, recovered %T", r)
	}
	remanence.Checkpoint("recovered", where)
	remanence.Use(v.key)
	r, v = nil, nil
	remanence.Notef("gc_cycles=%d", collect(wp, "the panic value's key buffer"))
	remanence.Checkpoint("dropped", where)
}

// secret.goexit: f calls runtime.Goexit, in a goroutine of its own with an
// outer defer (which runs before Do's erasure can).
func secretGoexit(useDo bool) {
	var where uintptr
	var enabledInDefer bool
	base := runtime.NumGoroutine()
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		defer func() {
			enabledInDefer = secret.Enabled()
			remanence.Checkpoint("in_defer", where)
		}()
		growStack()
		padded(func() {
			runDo(useDo, func() {
				where = stackKeyInside()
				runtime.Goexit()
			})
		})
		remanence.Fail("runtime.Goexit returned")
	}()
	<-finished
	waitGoroutines(base)
	remanence.Notef("secret_enabled_in_outer_defer=%t", enabledInDefer)
	remanence.Checkpoint("after", where)
}

// secret.heap: the key in a heap buffer allocated inside f; after Do no
// reference is left. before_gc: nothing collected yet; after_gc: once a
// garbage collection has provably freed it.
func secretHeap(useDo bool) {
	growStack()
	var where uintptr
	var wp weak.Pointer[byte]
	padded(func() {
		runDo(useDo, func() {
			key := make([]byte, remanence.SecretLen())
			remanence.ReadSecret(key)
			remanence.Use(key)
			where, wp = remanence.AddressOf(&key[0]), weak.Make(&key[0])
		})
	})
	remanence.Checkpoint("before_gc", where)
	remanence.Notef("gc_cycles=%d", collect(wp, "the heap key buffer"))
	remanence.Checkpoint("after_gc", where)
}

// mapValueCap: Go maps store values of at most 128 bytes inline in their
// groups (internal/abi.MapMaxElemBytes); bigger ones live in separate
// allocations.
const mapValueCap = 128

type mapHolder struct{ m map[int][mapValueCap]byte }

// secret.map: the key copied into a map's own storage (a value stored inline
// in the map group) created inside f.
func secretMap(useDo bool) {
	n := remanence.SecretLen()
	if n > mapValueCap {
		var scratch [keyCap]byte
		remanence.ReadSecret(scratch[:n])
		wipe(scratch[:n])
		remanence.Failf("secret of %d bytes does not fit the %d-byte map value", n, mapValueCap)
	}
	growStack()
	var wp weak.Pointer[mapHolder]
	padded(func() {
		runDo(useDo, func() {
			var key [mapValueCap]byte
			remanence.ReadSecret(key[:n])
			remanence.Use(key[:n])
			h := &mapHolder{m: make(map[int][mapValueCap]byte)}
			h.m[1] = key
			wp = weak.Make(h)
			remanence.Checkpoint("inside", remanence.AddressOf(&key[0]))
			v := h.m[1]
			remanence.Use(v[:n])
		})
	})
	// The map's slot has no address a program may take: no address reported.
	remanence.Checkpoint("before_gc", 0)
	remanence.Notef("gc_cycles=%d", collect(wp, "the map"))
	remanence.Checkpoint("after_gc", 0)
}

// secret.keepalive: the key in a local array of f, kept alive to the end of f
// with runtime.KeepAlive(key). KeepAlive takes an interface: converting the
// 4 KiB array boxes a copy of it on the heap (the compiler uses a stack
// temporary only for values up to 1 KiB). after: Do returned; after_gc: once
// a collection has provably run (a sentinel allocated next to the box, and
// dropped with it, is freed).
func secretKeepalive(useDo bool) {
	growStack()
	var where uintptr
	var sentinel weak.Pointer[[64]byte]
	padded(func() {
		runDo(useDo, func() {
			var key [keyCap]byte
			k := key[:remanence.SecretLen()]
			remanence.ReadSecret(k)
			remanence.Use(k)
			where = remanence.AddressOf(&key[0])
			remanence.Checkpoint("inside", where)
			sentinel = weak.Make(new([64]byte))
			runtime.KeepAlive(key)
		})
	})
	remanence.Checkpoint("after", where)
	remanence.Notef("gc_cycles=%d", collect(sentinel, "the sentinel"))
	remanence.Checkpoint("after_gc", where)
}

// secret.escape: a heap buffer allocated inside f escapes Do (stored in a
// variable of the caller). Expected leak while it is referenced.
func secretEscape() {
	growStack()
	var where uintptr
	var leaked []byte
	padded(func() {
		secret.Do(func() {
			key := make([]byte, remanence.SecretLen())
			remanence.ReadSecret(key)
			remanence.Use(key)
			leaked = key
			where = remanence.AddressOf(&key[0])
			remanence.Checkpoint("inside", where)
		})
	})
	runtime.GC() // a collection does not touch a live object
	remanence.Checkpoint("after", where)
	remanence.Use(leaked)
	wp := weak.Make(&leaked[0])
	leaked = nil
	remanence.Notef("gc_cycles=%d", collect(wp, "the escaped key buffer"))
	remanence.Checkpoint("dropped", where)
}

// globalKey is written inside Do: a global in .noptrbss.
var globalKey [keyCap]byte

// secret.global: the key in a global written inside f (documented
// limitation: globals are not protected).
func secretGlobal() {
	growStack()
	where := remanence.AddressOf(&globalKey[0])
	padded(func() {
		secret.Do(func() {
			k := globalKey[:remanence.SecretLen()]
			remanence.ReadSecret(k)
			remanence.Use(k)
			remanence.Checkpoint("inside", where)
		})
	})
	remanence.Checkpoint("after", where)
	remanence.Use(globalKey[:remanence.SecretLen()])
}

// secret.goroutine: f starts a goroutine and hands it a copy of the key over
// an unbuffered channel (the runtime copies it straight from f's stack to
// the goroutine's stack, no heap buffer). Does Do panic? Is the goroutine's
// copy erased when Do returns, or when the goroutine ends?
func secretGoroutine() {
	growStack()
	n := remanence.SecretLen()
	base := runtime.NumGoroutine()
	handoff := make(chan [keyCap]byte)
	started := make(chan uintptr)
	stop := make(chan struct{})
	exited := make(chan struct{})
	var where uintptr
	var goroutineEnabled bool
	r := catch(func() {
		padded(func() {
			secret.Do(func() {
				var key [keyCap]byte
				remanence.ReadSecret(key[:n])
				remanence.Use(key[:n])
				go func() {
					defer close(exited)
					growStack()
					gkey := <-handoff
					remanence.Use(gkey[:n])
					goroutineEnabled = secret.Enabled()
					started <- remanence.AddressOf(&gkey[0])
					<-stop
					remanence.Use(gkey[:n])
				}()
				handoff <- key
				where = <-started
				remanence.Checkpoint("inside", remanence.AddressOf(&key[0]))
			})
		})
	})
	remanence.Notef("do_panicked=%t goroutine_in_secret_mode=%t", r != nil, goroutineEnabled)
	if r != nil {
		remanence.Failf("secret.Do panicked: %v", r)
	}
	// The goroutine is alive, blocked, its copy of the key on its stack.
	remanence.Checkpoint("after", where)
	close(stop)
	<-exited
	waitGoroutines(base)
	remanence.Checkpoint("exited", where)
}

// growDepthKiB: how deep secret.stack_growth recurses (1 KiB frames); more
// than the 256 KiB growStack gives, so the stack is copied (three times: to
// 512 KiB, 1 MiB, 2 MiB).
const growDepthKiB = 1024

// What secret.stack_growth finds at the bottom of the recursion.
var (
	growOldAddr, growNewAddr uintptr
	growOldClear             bool
	deepSink                 byte
)

// deepThenCheckpoint recurses depth KiB deeper, then records where the key
// is now, whether its old location is clear, and stops at `grown`. key is a
// plain pointer parameter (never handed to a func value), so the key stays
// on the stack and the runtime adjusts this pointer when it copies the stack.
//
//go:noinline
func deepThenCheckpoint(key *[keyCap]byte, depth int) byte {
	var pad [1024]byte
	pad[depth%len(pad)] = byte(depth)
	if depth > 1 {
		pad[0] ^= deepThenCheckpoint(key, depth-1)
	} else {
		growNewAddr = remanence.AddressOf(&key[0])
		if growNewAddr != growOldAddr {
			// The copy freed the old stack; its memory stays mapped (Go does
			// not unmap heap memory), so reading it is safe.
			old := unsafe.Slice((*byte)(unsafe.Pointer(growOldAddr)), remanence.SecretLen())
			growOldClear = allZero(old)
		}
		remanence.Checkpoint("grown", growNewAddr)
	}
	deepSink ^= pad[0]
	return pad[depth%len(pad)]
}

// secret.stack_growth: with the key on the stack, a deep recursion inside f
// makes the runtime copy the stack to a bigger one (the key moves with it).
// grown: at the bottom of the recursion (the key's new address); after: Do
// returned (the key's first address). The target also reports whether the
// key's old location, in the freed old stack, was clear at `grown`.
func secretStackGrowth(useDo bool) {
	growStack()
	padded(func() {
		runDo(useDo, func() {
			var key [keyCap]byte
			k := key[:remanence.SecretLen()]
			remanence.ReadSecret(k)
			remanence.Use(k)
			growOldAddr = remanence.AddressOf(&key[0])
			remanence.Checkpoint("inside", growOldAddr)
			deepThenCheckpoint(&key, growDepthKiB)
			remanence.Use(key[:remanence.SecretLen()])
		})
	})
	if growNewAddr == growOldAddr {
		remanence.Fail("the stack did not move: the recursion was not deep enough")
	}
	remanence.Notef("stack_moved=true old_stack_clear_at_grown=%t", growOldClear)
	remanence.Checkpoint("after", growOldAddr)
}
