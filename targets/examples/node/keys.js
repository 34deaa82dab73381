'use strict'
// The code under test: wipeKey(key) promises that once it returns, no copy of the key is left in memory.
// It comes in two twins, so the test can show what remanence catches.

// What the leaky twin remembers: kept for the life of the process, as a real log buffer would be.
const auditLog = []

// Leaky: notes which key it wipes, in hex. fill(0) erases the Buffer, but toString('hex') made a second copy
// of the key, a string in V8's heap that auditLog keeps reachable and that no wipe can reach.
function wipeKeyLeaky (key) {
  auditLog.push(`wiped key ${key.toString('hex')}`)
  key.fill(0)
}

// Clean: erases the key in place and copies it nowhere on the way (sodium-native's sodium_memzero(key) would
// do as well).
function wipeKeyClean (key) {
  key.fill(0)
}

module.exports = { wipeKeyLeaky, wipeKeyClean }
