'use strict'
// remanence Node.js target: the built-in Node scenarios, on the remanence SDK (../sdk/node), which speaks the
// protocol of ../PROTOCOL.md over fd 3.
//
// Run as `node --expose-gc target.js <scenario>` (or `--list`).

const {
  register, names, main, fail, note, checkpoint, readSecret, secretLength, use, locate, mappingAt, collect, gcUntil
} = require('remanence-sdk')

// --------------------------------------------------------------- scenarios

let sodium = null
function lib () {
  if (sodium === null) sodium = require('sodium-native')
  return sodium
}

// A sodium_malloc buffer of the secret's length, its address, the secret read straight into it.
function sodiumKey () {
  const s = lib()
  const key = s.sodium_malloc(secretLength())
  if (!key.secure) fail('sodium_malloc did not return a secure buffer')
  // libsodium puts the user region at the end of its MADV_DONTDUMP data pages, against the guard page.
  const address = locate(key, m => m.flags.has('dd') && m.perms.startsWith('rw'))
  if (address === null) fail('could not locate the sodium_malloc buffer')
  readSecret(key)
  use(key)
  return { key, address }
}

function mapped (address) {
  return mappingAt(address) !== null
}

register('node.sodium.live', () => {
  const { key, address } = sodiumKey()
  checkpoint('in_use', address)
  use(key)
})

register('node.sodium.noaccess', () => {
  const s = lib()
  const { key, address } = sodiumKey()
  checkpoint('in_use', address)
  s.sodium_mprotect_noaccess(key)
  checkpoint('noaccess', address)
  s.sodium_mprotect_readwrite(key)
  use(key)
})

register('node.sodium.freed', async () => {
  const s = lib()
  let { key, address } = sodiumKey()
  checkpoint('in_use', address)
  // sodium-native's sodium_free only detaches the ArrayBuffer: libsodium's sodium_free (wipe + munmap)
  // is the ArrayBuffer's finalizer, run after a collection has found the object dead.
  s.sodium_free(key)
  note({ detached_length: key.length, still_mapped: mapped(address) })
  checkpoint('freed', address)
  key = null
  const rounds = await gcUntil(() => !mapped(address))
  if (rounds < 0) fail('the sodium_malloc region was still mapped after 50 collections')
  note({ gc_rounds: rounds })
  checkpoint('after_gc', address)
})

register('node.sodium.dropped', async () => {
  let { key, address } = sodiumKey()
  checkpoint('in_use', address)
  key = null // no sodium_free: only the finalizer will free (and wipe) the region
  collect()
  note({ still_mapped_after_gc_without_turn: mapped(address) })
  checkpoint('collected', address)
  const rounds = await gcUntil(() => !mapped(address))
  if (rounds < 0) fail('the sodium_malloc region was still mapped after 50 collections')
  note({ gc_rounds: rounds })
  checkpoint('finalized', address)
})

// A plain Buffer.alloc buffer of the secret's length (backing store in the C heap), its address, the
// secret read straight into it.
function bufferKey () {
  const key = Buffer.alloc(secretLength())
  // A backing store of its own (Buffer.alloc never hands out a slice of its pool); locate() moves the bytes of
  // a small buffer out of V8's heap before taking their address.
  if (key.buffer.byteLength !== key.length) fail('Buffer.alloc returned a view into a larger ArrayBuffer')
  // Node's allocator callocs it: in [heap], unless glibc's main arena could not grow [heap] in place
  // (something mapped right after it) and went on in anonymous mmap memory.
  let address = locate(key, m => m.name === '[heap]')
  if (address === null) address = locate(key, m => m.perms === 'rw-p' && m.name === '' && !m.flags.has('dd'))
  if (address === null) fail('could not locate the Buffer in the C heap')
  readSecret(key)
  use(key)
  return { key, address }
}

register('node.buffer.alloc', () => {
  const { key, address } = bufferKey()
  checkpoint('in_use', address)
  key.fill(0)
  use(key)
  checkpoint('wiped', address)
})

register('node.buffer.dropped', async () => {
  let { key, address } = bufferKey()
  checkpoint('in_use', address)
  const gone = new FinalizationRegistry(() => { gone.done = true })
  gone.register(key, 0)
  key = null
  const rounds = await gcUntil(() => gone.done === true)
  if (rounds < 0) fail('the Buffer was still alive after 50 collections')
  note({ gc_rounds: rounds })
  checkpoint('after_gc', address)
})

// Where the string scenarios leave the string's length, so the string is referenced until then.
let stringSink = 0

function stringScenario (encoding) {
  return async () => {
    const s = lib()
    const { key, address } = sodiumKey()
    let text = key.toString(encoding)
    // Collections while the string is referenced promote it to V8's old space, as happens to a key
    // string an application keeps for a while.
    collect()
    checkpoint('converted', address)
    s.sodium_memzero(key)
    use(key)
    checkpoint('wiped', address)
    stringSink = text.length // the string is still referenced at `wiped`
    // A sentinel object dropped with the string: once its finalization callback has run, a full
    // collection has found both dead.
    const gone = new FinalizationRegistry(() => { gone.done = true })
    let sentinel = {}
    gone.register(sentinel, 0)
    sentinel = null
    text = null
    const rounds = await gcUntil(() => gone.done === true)
    if (rounds < 0) fail('the sentinel was still alive after 50 collections')
    note({ gc_rounds: rounds })
    checkpoint('dropped', address)
  }
}

register('node.string.hex', stringScenario('hex'))
register('node.string.base64', stringScenario('base64'))
register('node.string.latin1', stringScenario('latin1'))

// Expected crashes: a write after sodium_mprotect_readonly, a read after sodium_mprotect_noaccess, each announced
// right before the illegal access; their twins make the key read-write again first and must not crash. (One byte past
// the end or before the start cannot be reached from JavaScript: Buffers are bounds-checked and every sodium-native
// binding checks its buffers' lengths.) Node's own SIGSEGV handler (for WebAssembly traps) hands any other fault
// back to the default action: the process dies by SIGSEGV.
register('node.sodium.readonly_write', () => {
  const s = lib()
  const { key, address } = sodiumKey()
  checkpoint('in_use', address)
  s.sodium_mprotect_readonly(key)
  checkpoint('write', address)
  key[0] ^= 0x5a
  fail('a write to a sodium_mprotect_readonly key did not crash')
})

register('node.sodium.readonly_write.readwrite', () => {
  const s = lib()
  const { key, address } = sodiumKey()
  checkpoint('in_use', address)
  s.sodium_mprotect_readonly(key)
  s.sodium_mprotect_readwrite(key)
  key[0] ^= 0x5a
  key[0] ^= 0x5a // twice: the key is whole again
  checkpoint('written', address)
  use(key)
})

register('node.sodium.noaccess_read', () => {
  const s = lib()
  const { key, address } = sodiumKey()
  checkpoint('in_use', address)
  s.sodium_mprotect_noaccess(key)
  checkpoint('read', address)
  note({ read: key[0] })
  fail('a read of a sodium_mprotect_noaccess key did not crash')
})

register('node.sodium.noaccess_read.readwrite', () => {
  const s = lib()
  const { key, address } = sodiumKey()
  checkpoint('in_use', address)
  s.sodium_mprotect_noaccess(key)
  s.sodium_mprotect_readwrite(key)
  note({ read: key[0] })
  checkpoint('read', address)
  use(key)
})

module.exports = { register, names }

if (require.main === module) main(process.argv.slice(2), { requireGc: true })
