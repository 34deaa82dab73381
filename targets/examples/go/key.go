// The code under test: a session key that is bound to a context label before
// use and must leave no copy behind when it is closed.
package main

const contextLabel = "|session-v1"

// SessionKey holds a key; Close promises to erase it.
type SessionKey struct {
	material []byte
}

// NewSessionKeyLeaky makes room for the key only. Bind's append then has to
// move the key to a larger array: the first array, still holding the whole
// key, is dropped without a wipe, and Go's garbage collector never zeroes
// the memory it frees.
func NewSessionKeyLeaky(n int) *SessionKey {
	return &SessionKey{material: make([]byte, n)}
}

// NewSessionKeyClean makes room for the label too, so Bind's append stays in
// place: the key only ever exists in one array, the one Close wipes.
func NewSessionKeyClean(n int) *SessionKey {
	return &SessionKey{material: make([]byte, n, n+len(contextLabel))}
}

// Key is where the key goes (the caller fills it).
func (k *SessionKey) Key() []byte { return k.material }

// Bind appends the context label the key is used for.
func (k *SessionKey) Bind() { k.material = append(k.material, contextLabel...) }

// Close wipes the key in place.
func (k *SessionKey) Close() { clear(k.material) }
