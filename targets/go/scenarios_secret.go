// runtime/secret scenarios (GOEXPERIMENT=runtimesecret): secret.*.
//
// Each scenario that has one registers a `<name>_nodo` twin running the very
// same code without secret.Do, as the control (secret.none is the twin of
// secret.return).
package main

import (
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
	k := key[:secretLen()]
	readSecret(k)
	use(k)
	where := addrOf(&key[0])
	checkpoint("inside", where)
	return where
}

// secret.return / secret.none: the key on f's stack; f returns normally.
func secretReturn(useDo bool) {
	growStack()
	var where uintptr
	padded(func() {
		runDo(useDo, func() { where = stackKeyInside() })
	})
	checkpoint("after", where)
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
			fail("expected the scenario's panic to reach the caller, recovered %v", r)
		}
	})
	checkpoint("after", where)
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
				key := make([]byte, secretLen())
				readSecret(key)
				use(key)
				where, wp = addrOf(&key[0]), weak.Make(&key[0])
				checkpoint("inside", where)
				panic(&panicBox{key})
			})
		})
	})
	v, ok := r.(*panicBox)
	if !ok {
		fail("expected a *panicBox panic, recovered %T", r)
	}
	checkpoint("recovered", where)
	use(v.key)
	r, v = nil, nil
	note("gc_cycles=%d", collect(wp, "the panic value's key buffer"))
	checkpoint("dropped", where)
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
			checkpoint("in_defer", where)
		}()
		growStack()
		padded(func() {
			runDo(useDo, func() {
				where = stackKeyInside()
				runtime.Goexit()
			})
		})
		fail("runtime.Goexit returned")
	}()
	<-finished
	waitGoroutines(base)
	note("secret_enabled_in_outer_defer=%t", enabledInDefer)
	checkpoint("after", where)
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
			key := make([]byte, secretLen())
			readSecret(key)
			use(key)
			where, wp = addrOf(&key[0]), weak.Make(&key[0])
		})
	})
	checkpoint("before_gc", where)
	note("gc_cycles=%d", collect(wp, "the heap key buffer"))
	checkpoint("after_gc", where)
}

// mapValueCap: Go maps store values of at most 128 bytes inline in their
// groups (internal/abi.MapMaxElemBytes); bigger ones live in separate
// allocations.
const mapValueCap = 128

type mapHolder struct{ m map[int][mapValueCap]byte }

// secret.map: the key copied into a map's own storage (a value stored inline
// in the map group) created inside f.
func secretMap(useDo bool) {
	n := secretLen()
	if n > mapValueCap {
		var scratch [keyCap]byte
		readSecret(scratch[:n])
		wipe(scratch[:n])
		fail("secret of %d bytes does not fit the %d-byte map value", n, mapValueCap)
	}
	growStack()
	var wp weak.Pointer[mapHolder]
	padded(func() {
		runDo(useDo, func() {
			var key [mapValueCap]byte
			readSecret(key[:n])
			use(key[:n])
			h := &mapHolder{m: make(map[int][mapValueCap]byte)}
			h.m[1] = key
			wp = weak.Make(h)
			checkpoint("inside", addrOf(&key[0]))
			v := h.m[1]
			use(v[:n])
		})
	})
	// The map's slot has no address a program may take: no address reported.
	checkpoint("before_gc", 0)
	note("gc_cycles=%d", collect(wp, "the map"))
	checkpoint("after_gc", 0)
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
			k := key[:secretLen()]
			readSecret(k)
			use(k)
			where = addrOf(&key[0])
			checkpoint("inside", where)
			sentinel = weak.Make(new([64]byte))
			runtime.KeepAlive(key)
		})
	})
	checkpoint("after", where)
	note("gc_cycles=%d", collect(sentinel, "the sentinel"))
	checkpoint("after_gc", where)
}

// secret.escape: a heap buffer allocated inside f escapes Do (stored in a
// variable of the caller). Expected leak while it is referenced.
func secretEscape() {
	growStack()
	var where uintptr
	var leaked []byte
	padded(func() {
		secret.Do(func() {
			key := make([]byte, secretLen())
			readSecret(key)
			use(key)
			leaked = key
			where = addrOf(&key[0])
			checkpoint("inside", where)
		})
	})
	runtime.GC() // a collection does not touch a live object
	checkpoint("after", where)
	use(leaked)
	wp := weak.Make(&leaked[0])
	leaked = nil
	note("gc_cycles=%d", collect(wp, "the escaped key buffer"))
	checkpoint("dropped", where)
}

// globalKey is written inside Do: a global in .noptrbss.
var globalKey [keyCap]byte

// secret.global: the key in a global written inside f (documented
// limitation: globals are not protected).
func secretGlobal() {
	growStack()
	where := addrOf(&globalKey[0])
	padded(func() {
		secret.Do(func() {
			k := globalKey[:secretLen()]
			readSecret(k)
			use(k)
			checkpoint("inside", where)
		})
	})
	checkpoint("after", where)
	use(globalKey[:secretLen()])
}

// secret.goroutine: f starts a goroutine and hands it a copy of the key over
// an unbuffered channel (the runtime copies it straight from f's stack to
// the goroutine's stack, no heap buffer). Does Do panic? Is the goroutine's
// copy erased when Do returns, or when the goroutine ends?
func secretGoroutine() {
	growStack()
	n := secretLen()
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
				readSecret(key[:n])
				use(key[:n])
				go func() {
					defer close(exited)
					growStack()
					gkey := <-handoff
					use(gkey[:n])
					goroutineEnabled = secret.Enabled()
					started <- addrOf(&gkey[0])
					<-stop
					use(gkey[:n])
				}()
				handoff <- key
				where = <-started
				checkpoint("inside", addrOf(&key[0]))
			})
		})
	})
	note("do_panicked=%t goroutine_in_secret_mode=%t", r != nil, goroutineEnabled)
	if r != nil {
		fail("secret.Do panicked: %v", r)
	}
	// The goroutine is alive, blocked, its copy of the key on its stack.
	checkpoint("after", where)
	close(stop)
	<-exited
	waitGoroutines(base)
	checkpoint("exited", where)
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
		growNewAddr = addrOf(&key[0])
		if growNewAddr != growOldAddr {
			// The copy freed the old stack; its memory stays mapped (Go does
			// not unmap heap memory), so reading it is safe.
			old := unsafe.Slice((*byte)(unsafe.Pointer(growOldAddr)), secretLen())
			growOldClear = allZero(old)
		}
		checkpoint("grown", growNewAddr)
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
			k := key[:secretLen()]
			readSecret(k)
			use(k)
			growOldAddr = addrOf(&key[0])
			checkpoint("inside", growOldAddr)
			deepThenCheckpoint(&key, growDepthKiB)
			use(key[:secretLen()])
		})
	})
	if growNewAddr == growOldAddr {
		fail("the stack did not move: the recursion was not deep enough")
	}
	note("stack_moved=true old_stack_clear_at_grown=%t", growOldClear)
	checkpoint("after", growOldAddr)
}
