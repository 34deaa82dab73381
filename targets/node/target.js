'use strict'
// remanence Node.js target: speaks the protocol of ../PROTOCOL.md over fd 3.
//
// Run as `node --expose-gc target.js <scenario>` (or `--list`). fd 3 is a blocking AF_UNIX socket:
// it is used only through fs.readSync/fs.writeSync (read(2)/write(2), no stream, no buffering),
// raw bytes are read with an exact-length loop straight into their final storage and control lines
// one byte at a time. Nothing here prints, logs or echoes bytes read from fd 3.

const fs = require('fs')

const FD = 3
const SECRET_MAX = 4096
const CANARY_MAX = 1 << 20
const EXIT = { OK: 0, USAGE: 64, FAILED: 70, CHANNEL_CLOSED: 75 }
const NAME_RE = /^[A-Za-z0-9._-]+$/

// ------------------------------------------------------------------ registry

const registry = new Map()

// Registers a scenario: fn(ctx) may be async. A bad or duplicate name throws at module load, so
// the program dies (status 1, message on stderr) before any scenario runs.
function register (name, fn) {
  if (typeof name !== 'string' || !NAME_RE.test(name) || typeof fn !== 'function') {
    throw new Error(`remanence-target-node: invalid scenario registration '${name}'`)
  }
  if (registry.has(name)) {
    throw new Error(`remanence-target-node: duplicate scenario registration '${name}'`)
  }
  registry.set(name, fn)
}

function names () {
  return [...registry.keys()].sort()
}

// ------------------------------------------------------------------- channel

let secretLen = 0
let secretConsumed = 0
// The canary: a plain Buffer kept reachable and unwiped until exit (positive control).
let canaryKeep = null
// Where use() leaves its checksum, so the reads are not dead code.
let useSink = 0

function channelClosed () {
  try { fs.writeSync(2, 'remanence-target-node: control channel closed\n') } catch (e) {}
  process.exit(EXIT.CHANNEL_CLOSED)
}

function sendAll (text) {
  const buf = Buffer.from(text, 'latin1')
  let off = 0
  while (off < buf.length) {
    let w
    try {
      w = fs.writeSync(FD, buf, off, buf.length - off)
    } catch (e) {
      if (e.code === 'EINTR' || e.code === 'EAGAIN') continue
      channelClosed() // EPIPE (node ignores SIGPIPE), ECONNRESET, EBADF, ...
    }
    off += w
  }
}

function sendLine (prefix, text) {
  // Control characters never reach the channel: a line stays one line.
  sendAll(prefix + String(text).replace(/[\x00-\x1f\x7f-\uffff]/g, '?').slice(0, 500) + '\n')
}

// Exactly `len` bytes from fd 3 into dst[off, off+len): straight into dst, no intermediate buffer.
function readExact (dst, off, len) {
  while (len > 0) {
    let r
    try {
      r = fs.readSync(FD, dst, off, len, null)
    } catch (e) {
      if (e.code === 'EINTR' || e.code === 'EAGAIN') continue
      channelClosed()
    }
    if (r === 0) channelClosed()
    off += r
    len -= r
  }
}

const lineByte = Buffer.alloc(1)

// One control line (without '\n'), byte by byte: never consumes a byte past the newline.
// Returns null if the line is too long or not printable ASCII (its content is never echoed).
function readControlLine (cap = 32) {
  let line = ''
  let bad = false
  for (;;) {
    readExact(lineByte, 0, 1)
    const c = lineByte[0]
    if (c === 0x0a) break
    if (c < 0x20 || c > 0x7e) bad = true
    if (line.length + 1 < cap) line += String.fromCharCode(c)
    else bad = true
  }
  return bad ? null : line
}

function fail (message) {
  try { fs.writeSync(2, `remanence-target-node: error: ${message}\n`) } catch (e) {}
  sendLine('error ', message)
  process.exit(EXIT.FAILED)
}

// Claims `n` secret bytes (for a scenario that reads them itself).
function claimSecret (n) {
  if (n > secretLen - secretConsumed) {
    fail(`scenario asked for ${n} secret bytes, only ${secretLen - secretConsumed} left`)
  }
  secretConsumed += n
}

// Reads the whole secret from fd 3 straight into dst (a Buffer / Uint8Array of secretLen bytes).
function readSecret (dst) {
  if (dst.length !== secretLen) fail(`secret storage holds ${dst.length} bytes, the secret has ${secretLen}`)
  claimSecret(dst.length)
  readExact(dst, 0, dst.length)
}

// Reads every byte of buf (a checksum kept in a global), as code using the key would.
function use (buf) {
  let sum = 0
  for (let i = 0; i < buf.length; i++) sum = (Math.imul(sum, 31) + buf[i]) >>> 0
  useSink = sum
  return sum
}

function checkpoint (name, address) {
  if (!NAME_RE.test(name)) fail('invalid checkpoint name')
  // Otherwise the unread secret bytes would be taken for a control line.
  if (secretConsumed !== secretLen) fail(`checkpoint ${name} reached before the whole secret was read`)
  sendLine('checkpoint ', `${name} ${address == null ? '-' : '0x' + address.toString(16)}`)
  if (readControlLine() !== 'continue') fail(`expected 'continue' after checkpoint ${name}`)
}

function note (fields) {
  sendLine('note ', Object.entries(fields).map(([k, v]) => `${k}=${v}`).join(' '))
}

// --------------------------------------------------------------- memory probes

// Mappings of this process from /proc/self/smaps: {lo, hi, perms, name, flags: Set}.
function mappings () {
  const out = []
  let cur = null
  for (const line of fs.readFileSync('/proc/self/smaps', 'latin1').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line)
    if (m) {
      cur = { lo: parseInt(m[1], 16), hi: parseInt(m[2], 16), perms: m[3], name: m[4], flags: new Set() }
      out.push(cur)
    } else if (cur && line.startsWith('VmFlags:')) {
      for (const f of line.slice(8).trim().split(/\s+/)) cur.flags.add(f)
    }
  }
  return out
}

function mappingAt (address) {
  return mappings().find(m => m.lo <= address && address < m.hi) || null
}

let memFd = -1
function readSelf (address, buf) {
  if (memFd < 0) memFd = fs.openSync('/proc/self/mem', 'r')
  try {
    return fs.readSync(memFd, buf, 0, buf.length, address)
  } catch (e) {
    return 0
  }
}

// Every address of `needle` within [lo, hi) of this process's memory (read through /proc/self/mem
// in chunks; the needle is a random marker, never the key).
function occurrences (lo, hi, needle) {
  const found = new Set()
  const chunk = Buffer.allocUnsafeSlow(Math.min(hi - lo, 1 << 20) + needle.length)
  for (let at = lo; at < hi; at += chunk.length - needle.length) {
    const want = Math.min(chunk.length, hi - at)
    const view = chunk.subarray(0, readSelf(at, chunk.subarray(0, want)))
    for (let i = view.indexOf(needle); i >= 0; i = view.indexOf(needle, i + 1)) found.add(at + i)
    if (at + want >= hi) break
  }
  return [...found]
}

// Where buf's bytes live, found by filling buf with random markers (never the secret) and keeping the
// addresses, among the mappings `select` picks, that follow every refill. The first round scans the
// mappings, later rounds read each candidate into a probe first filled with the marker's complement,
// so the probe (or a stale scan buffer) can never pass for buf. Leaves buf zeroed; null if no single
// address is left.
function locate (buf, select, rounds = 16) {
  let candidates = null
  const probe = Buffer.alloc(buf.length)
  for (let round = 0; round < rounds; round++) {
    // Written from JS, in place: crypto.randomFillSync would leave a copy of a small marker in a
    // scratch buffer of its own, which follows every refill just as buf does.
    for (let i = 0; i < buf.length; i++) buf[i] = Math.floor(Math.random() * 256)
    if (candidates === null) {
      candidates = []
      for (const m of mappings().filter(select)) candidates.push(...occurrences(m.lo, m.hi, buf))
    } else {
      candidates = candidates.filter(a => {
        for (let i = 0; i < buf.length; i++) probe[i] = ~buf[i]
        return readSelf(a, probe) === buf.length && probe.equals(buf)
      })
    }
    if (candidates.length <= 1 && round >= 2) break
  }
  buf.fill(0)
  probe.fill(0)
  return candidates && candidates.length === 1 ? candidates[0] : null
}

function collect (times = 4) {
  for (let i = 0; i < times; i++) global.gc()
}

// Lets the event loop run: napi finalizers queued by a collection run in a setImmediate callback.
function turn () {
  return new Promise(resolve => setImmediate(resolve))
}

// --------------------------------------------------------------- scenarios

let sodium = null
function lib () {
  if (sodium === null) sodium = require('sodium-native')
  return sodium
}

// A sodium_malloc buffer of the secret's length, its address, the secret read straight into it.
function sodiumKey () {
  const s = lib()
  const key = s.sodium_malloc(secretLen)
  if (!key.secure) fail('sodium_malloc did not return a secure buffer')
  // libsodium puts the user region at the end of its MADV_DONTDUMP data pages, against the guard page.
  const address = locate(key, m => m.flags.has('dd') && m.perms.startsWith('rw'))
  if (address === null) fail('could not locate the sodium_malloc buffer')
  readSecret(key)
  use(key)
  return { key, address }
}

// Runs collections and event-loop turns until pred() holds (at most `max` rounds); the rounds used.
async function gcUntil (pred, max = 50) {
  for (let round = 1; round <= max; round++) {
    collect()
    await turn()
    await turn()
    if (pred()) return round
  }
  return -1
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
  const key = Buffer.alloc(secretLen)
  // V8 keeps the bytes of a typed array of up to 64 bytes inside its own heap until someone asks for
  // its ArrayBuffer; then it moves them to a malloc'd backing store for good. Ask now, so the bytes are
  // where they will stay before their address is taken (fs.readSync would move them otherwise).
  if (key.buffer.byteLength !== secretLen) fail('Buffer.alloc returned a view into a larger ArrayBuffer')
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
    useSink = text.length // the string is still referenced at `wiped`
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

// ----------------------------------------------------------------------- main

function envSize (name, lo, hi) {
  const v = process.env[name]
  if (v === undefined || !/^[0-9]+$/.test(v) || v.length > 10) return null
  const n = Number(v)
  return n >= lo && n <= hi ? n : null
}

function usage (name) {
  fs.writeSync(2, `unknown scenario '${name}'; known: ${names().join(' ')}\n`)
  process.exit(EXIT.USAGE)
}

async function main (argv) {
  if (argv.length === 1 && argv[0] === '--list') {
    fs.writeSync(1, names().map(n => n + '\n').join(''))
    process.exit(EXIT.OK)
  }
  if (argv.length !== 1) usage(argv.length ? argv[0] : '')
  const scenario = registry.get(argv[0])
  if (scenario === undefined) usage(argv[0])
  if (typeof global.gc !== 'function') {
    fs.writeSync(2, 'remanence-target-node: run with node --expose-gc\n')
  }

  // fd 3 must be the harness's socket: without it, node itself may have put one of its own files on
  // fd 3 (an epoll or event fd), which must not be taken for the channel.
  let isSocket = false
  try {
    isSocket = fs.fstatSync(FD).isSocket()
  } catch (e) {}
  if (!isSocket) channelClosed()
  sendLine('ready ', '1')

  const proto = process.env.REMANENCE_PROTOCOL
  if (proto !== undefined && proto !== '1') fail('unsupported REMANENCE_PROTOCOL (this target speaks 1)')
  secretLen = envSize('REMANENCE_SECRET_LEN', 1, SECRET_MAX)
  if (secretLen === null) fail(`REMANENCE_SECRET_LEN must be an integer in 1..${SECRET_MAX}`)
  const canaryLen = envSize('REMANENCE_CANARY_LEN', 1, CANARY_MAX)
  if (canaryLen === null) fail(`REMANENCE_CANARY_LEN must be an integer in 1..${CANARY_MAX}`)
  if (typeof global.gc !== 'function') fail('global.gc is missing: run node with --expose-gc')

  const canary = Buffer.alloc(canaryLen)
  readExact(canary, 0, canaryLen)
  canaryKeep = canary

  await scenario()

  if (secretConsumed !== secretLen) fail(`scenario ${argv[0]} did not read the whole secret`)
  sendLine('done', '')
  use(canaryKeep)
  process.exit(EXIT.OK)
}

module.exports = { register, names }

if (require.main === module) {
  main(process.argv.slice(2)).catch(e => fail(`scenario threw: ${e && e.message}`))
}
