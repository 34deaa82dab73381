// AES key schedule scenarios: go.aes.*.
//
// aes.NewCipher expands the key into a Block on the heap (on amd64 with AES-NI:
// the round keys in FIPS-197 byte order; Go's generic code keeps 32-bit words
// in native byte order, found as aesNNN-schedule-u32). crypto/aes offers no way
// to wipe a Block: wiping the key slice leaves its schedule behind.
package main

import (
	"crypto/aes"
	"crypto/cipher"
	"remanence.dev/remanence"
	"runtime"
	"unsafe"
	"weak"
)

func init() {
	register("go.aes.cipher_kept", aesCipherKept)
	register("go.aes.cipher_dropped", func() { aesCipherDropped(true) })
	register("go.aes.cipher_dropped_nodo", func() { aesCipherDropped(false) })
}

// loadedKey: the secret read into a heap slice (positive control at key_loaded).
func loadedKey() ([]byte, uintptr) {
	key := make([]byte, remanence.SecretLen())
	remanence.ReadSecret(key)
	where := remanence.AddressOf(&key[0])
	remanence.Checkpoint("key_loaded", where)
	return key, where
}

// newCipher: a Block for key, used once, and the address of its heap object
// (an interface's data word: the *aes.Block, whose type is internal).
func newCipher(key []byte) (cipher.Block, *byte) {
	block, err := aes.NewCipher(key)
	if err != nil {
		remanence.Failf("aes.NewCipher: %v", err)
	}
	var buf [aes.BlockSize]byte
	block.Encrypt(buf[:], buf[:])
	return block, (*byte)((*[2]unsafe.Pointer)(unsafe.Pointer(&block))[1])
}

// go.aes.cipher_kept: the cipher kept, the key slice wiped.
func aesCipherKept() {
	growStack()
	key, _ := loadedKey()
	var block cipher.Block
	var where uintptr
	padded(func() {
		var object *byte
		block, object = newCipher(key)
		where = remanence.AddressOf(object)
	})
	wipe(key)
	remanence.Checkpoint("key_wiped", where)
	runtime.KeepAlive(block)
}

// go.aes.cipher_dropped: the cipher made and dropped inside secret.Do (or
// not, for the _nodo twin), the key slice wiped, then garbage collections
// until the Block has been freed.
func aesCipherDropped(useDo bool) {
	growStack()
	key, _ := loadedKey()
	var wp weak.Pointer[byte]
	var where uintptr
	padded(func() {
		runDo(useDo, func() {
			_, object := newCipher(key)
			where, wp = remanence.AddressOf(object), weak.Make(object)
		})
	})
	wipe(key)
	remanence.Checkpoint("key_wiped", where)
	remanence.Notef("gc_cycles=%d", collect(wp, "the AES block"))
	remanence.Checkpoint("after_gc", where)
}
