'use strict'
// remanence-sdk: the target protocol of remanence (targets/PROTOCOL.md, version 1) for a Node.js test program.
//
// The harness starts the program with a connected AF_UNIX socket on fd 3. fd 3 is used only through
// fs.readSync/fs.writeSync (read(2)/write(2) on the blocking socket: no stream, no buffering): raw bytes are
// read with an exact-length loop straight into the caller's storage, control lines one byte at a time.
// Nothing here prints, logs or echoes bytes read from fd 3.

const fs = require('fs')

const FD = 3
const SECRET_MAX = 4096
const CANARY_MAX = 1 << 20
const DERIVED_MAX = 4096
const EXIT = Object.freeze({ OK: 0, USAGE: 64, FAILED: 70, CHANNEL_CLOSED: 75 })
const NAME_RE = /^[A-Za-z0-9._-]+$/
const LABEL_RE = /^[a-z0-9_]{1,64}$/
const GC_MISSING = 'global.gc is missing: run node with --expose-gc'

// ------------------------------------------------------------------- channel

// True once fd 3 is known to be the harness's socket: before that, nothing is ever written to it.
let channelOpen = false
let secretLen = 0
let secretConsumed = 0
// The canary: a plain Buffer kept reachable and unwiped until exit (the positive control).
let canaryKeep = null
// Where use() leaves its checksum, so the reads are not dead code.
let useSink = 0

function say (text) {
  try { fs.writeSync(2, `remanence-sdk: ${text}\n`) } catch (e) {}
}

function channelClosed () {
  say('control channel closed')
  process.exit(EXIT.CHANNEL_CLOSED)
}

function sendBytes (bytes) {
  let off = 0
  while (off < bytes.length) {
    let w
    try {
      w = fs.writeSync(FD, bytes, off, bytes.length - off)
    } catch (e) {
      if (e.code === 'EINTR' || e.code === 'EAGAIN') continue
      channelClosed() // EPIPE (node ignores SIGPIPE), ECONNRESET, EBADF, ...
    }
    off += w
  }
}

function sendLine (prefix, text) {
  // Control characters never reach the channel: a line stays one line.
  const line = prefix + String(text).replace(/[\x00-\x1f\x7f-\uffff]/g, '?').slice(0, 500) + '\n'
  sendBytes(Buffer.from(line, 'latin1'))
}

// A Uint8Array over the bytes of a Buffer, TypedArray, DataView or ArrayBuffer (a view: nothing copied).
function bytesOf (storage) {
  if (storage instanceof Uint8Array) return storage
  if (ArrayBuffer.isView(storage)) return new Uint8Array(storage.buffer, storage.byteOffset, storage.byteLength)
  if (storage instanceof ArrayBuffer || storage instanceof SharedArrayBuffer) return new Uint8Array(storage)
  throw new TypeError('expected a Buffer, TypedArray, DataView or ArrayBuffer')
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

// `error <message>` to the harness (once the channel is open) and exit 70.
function fail (message) {
  say(`error: ${message}`)
  if (channelOpen) sendLine('error ', message)
  process.exit(EXIT.FAILED)
}

function requireStarted (what) {
  if (!channelOpen) fail(`${what} before start()`)
}

function envSize (name, lo, hi) {
  const v = process.env[name]
  if (v === undefined || !/^[0-9]+$/.test(v) || v.length > 10) return null
  const n = Number(v)
  return n >= lo && n <= hi ? n : null
}

// Starts the conversation: fd 3 must be a socket (else exit 75), `ready 1`, the REMANENCE_* variables checked
// (a bad one: `error`, exit 70), the canary read into a plain Buffer kept live until exit. Returns the secret's
// length. With {requireGc: true}, a program started without node --expose-gc fails (exit 70) here too.
function start ({ requireGc = false } = {}) {
  if (channelOpen) fail('start() called twice')
  if (requireGc && typeof global.gc !== 'function') say('run with node --expose-gc')
  // Without the harness's socket, node itself may have put one of its own files on fd 3 (an epoll or event
  // fd), which must not be taken for the channel.
  let isSocket = false
  try {
    isSocket = fs.fstatSync(FD).isSocket()
  } catch (e) {}
  if (!isSocket) channelClosed()
  channelOpen = true
  process.on('uncaughtException', e => fail(`uncaught exception: ${e && e.message}`))
  process.on('unhandledRejection', e => fail(`unhandled rejection: ${e && e.message}`))
  sendLine('ready ', '1')

  const proto = process.env.REMANENCE_PROTOCOL
  if (proto !== undefined && proto !== '1') fail('unsupported REMANENCE_PROTOCOL (this target speaks 1)')
  const length = envSize('REMANENCE_SECRET_LEN', 1, SECRET_MAX)
  if (length === null) fail(`REMANENCE_SECRET_LEN must be an integer in 1..${SECRET_MAX}`)
  const canaryLen = envSize('REMANENCE_CANARY_LEN', 1, CANARY_MAX)
  if (canaryLen === null) fail(`REMANENCE_CANARY_LEN must be an integer in 1..${CANARY_MAX}`)
  if (requireGc && typeof global.gc !== 'function') fail(GC_MISSING)

  const canary = Buffer.alloc(canaryLen)
  readExact(canary, 0, canaryLen)
  canaryKeep = canary
  secretLen = length
  return secretLen
}

// The secret's length (0 before start()).
function secretLength () {
  return secretLen
}

// Reads `length` secret bytes (by default all not read yet) from fd 3 straight into dst at byte `offset`:
// dst is the secret's final storage (a Buffer, a sodium-native secure buffer, any TypedArray, DataView or
// ArrayBuffer), no intermediate buffer is used.
function readSecret (dst, offset = 0, length = secretLen - secretConsumed) {
  requireStarted('readSecret()')
  const bytes = bytesOf(dst)
  if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 1 ||
      offset + length > bytes.length) {
    fail(`readSecret: ${length} bytes at offset ${offset} do not fit a ${bytes.length}-byte buffer`)
  }
  if (length > secretLen - secretConsumed) {
    fail(`asked for ${length} secret bytes, only ${secretLen - secretConsumed} left`)
  }
  secretConsumed += length
  readExact(bytes, offset, length)
}

// Reads every byte of buf (a checksum kept in a module variable), as code using the key would.
function use (buf) {
  const bytes = bytesOf(buf)
  let sum = 0
  for (let i = 0; i < bytes.length; i++) sum = (Math.imul(sum, 31) + bytes[i]) >>> 0
  useSink = sum
  return sum
}

function requireWholeSecret (what) {
  // Otherwise the unread secret bytes would be taken for a control line.
  if (secretConsumed !== secretLen) fail(`${what} before the whole secret was read`)
}

function formatAddress (address) {
  if (address === null || address === undefined) return '-'
  if ((typeof address === 'number' && Number.isSafeInteger(address) && address >= 0) ||
      (typeof address === 'bigint' && address >= 0n)) {
    return '0x' + address.toString(16)
  }
  fail('a checkpoint address must be a non-negative integer (number or bigint), or null')
}

// `checkpoint <name> <address>`, then waits for the harness's `continue` (its snapshots are taken meanwhile).
// address: where the secret is (or was) kept, as a number or bigint (see locate()), or null for none.
function checkpoint (name, address = null) {
  requireStarted('checkpoint()')
  if (typeof name !== 'string' || !NAME_RE.test(name)) fail('invalid checkpoint name')
  requireWholeSecret(`checkpoint ${name} reached`)
  const line = `${name} ${formatAddress(address)}`
  for (;;) {
    sendLine('checkpoint ', line)
    const reply = readControlLine()
    if (reply === 'continue') return
    if (reply !== 'collect') fail(`expected 'continue' after checkpoint ${name}`)
    // A full collection, then the same checkpoint again.
    if (typeof global.gc !== 'function') fail('collect needs node --expose-gc')
    global.gc()
  }
}

// `note k=v ...`: facts worth recording in the report. Never the secret.
function note (fields) {
  requireStarted('note()')
  sendLine('note ', Object.entries(fields).map(([k, v]) => `${k}=${v}`).join(' '))
}

// `derived <label> <n>` then the n bytes of value, sent from its own storage: a value computed from the secret
// that the harness must look for too. Send it before the first checkpoint with an expectation for it.
function derived (label, value) {
  requireStarted('derived()')
  if (typeof label !== 'string' || !LABEL_RE.test(label)) fail('invalid derived label')
  const bytes = bytesOf(value)
  if (bytes.length < 1 || bytes.length > DERIVED_MAX) fail(`derived value length out of range 1..${DERIVED_MAX}`)
  requireWholeSecret('derived value sent')
  sendLine('derived ', `${label} ${bytes.length}`)
  sendBytes(bytes)
}

// `done` and exit 0: the whole secret must have been read.
function done () {
  requireStarted('done()')
  requireWholeSecret('done')
  sendLine('done', '')
  use(canaryKeep)
  process.exit(EXIT.OK)
}

// --------------------------------------------------------------- memory probes

// Mappings of this process from /proc/self/smaps: {lo, hi, perms, name, flags: Set of VmFlags}.
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

// The mapping holding `address`, or null once it is unmapped.
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

// Every address of `needle` within [lo, hi) of this process's memory (read through /proc/self/mem in chunks;
// the needle is a random marker, never the key).
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

// Read-write mappings that are not thread stacks or kernel pages: where a Buffer's or a secure buffer's
// bytes can be.
function writableData (m) {
  return m.perms.startsWith('rw') && !m.name.startsWith('[stack') && !m.name.startsWith('[v')
}

// The address of storage's bytes, for checkpoint(): call it BEFORE the secret is read into storage. Node has
// no API for it, so storage is filled with random markers (written from JS, never the secret) and the
// addresses, among the mappings `select` picks (by default every read-write one), that follow every refill
// are kept until one is left. The first round scans the mappings; later rounds read each candidate into a
// probe first filled with the marker's complement, so neither the probe nor a stale scan buffer can pass for
// storage. Leaves storage zeroed; returns null if no single address is left.
//
// A small typed array (up to 64 bytes) keeps its bytes inside V8's heap, where the GC moves them, until its
// ArrayBuffer is asked for; locate() asks first, which moves them for good to a backing store of their own.
function locate (storage, select = writableData, rounds = 16) {
  if (ArrayBuffer.isView(storage)) void storage.buffer
  const buf = bytesOf(storage)
  if (buf.length === 0) return null
  let candidates = null
  const probe = Buffer.alloc(buf.length)
  for (let round = 0; round < rounds; round++) {
    // Written from JS, in place: crypto.randomFillSync would leave a copy of a small marker in a scratch
    // buffer of its own, which follows every refill just as storage does.
    for (let i = 0; i < buf.length; i++) buf[i] = Math.floor(Math.random() * 256)
    if (candidates === null) {
      candidates = []
      // One push each, not push(...spread): a one-byte marker can occur a million times, more than a call takes
      // arguments.
      for (const m of mappings().filter(select)) for (const a of occurrences(m.lo, m.hi, buf)) candidates.push(a)
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

// ------------------------------------------------------------ garbage collection

// `times` full collections (node must run with --expose-gc).
function collect (times = 4) {
  if (typeof global.gc !== 'function') fail(GC_MISSING)
  for (let i = 0; i < times; i++) global.gc()
}

// Lets the event loop run: napi finalizers queued by a collection run in a setImmediate callback.
function turn () {
  return new Promise(resolve => setImmediate(resolve))
}

// Collections and event-loop turns until pred() holds (at most `max` rounds); the rounds used, or -1.
async function gcUntil (pred, max = 50) {
  for (let round = 1; round <= max; round++) {
    collect()
    await turn()
    await turn()
    if (pred()) return round
  }
  return -1
}

// ------------------------------------------------------------------ registry

// For a program holding many scenarios, as remanence's built-in Node target does: register(name, fn) at
// load, then main() runs the one argv names.
const registry = new Map()

// Registers a scenario: fn() may be async. A bad or duplicate name throws at module load, so the program
// dies (status 1, message on stderr) before any scenario runs.
function register (name, fn) {
  if (typeof name !== 'string' || !NAME_RE.test(name) || typeof fn !== 'function') {
    throw new Error(`remanence-sdk: invalid scenario registration '${name}'`)
  }
  if (registry.has(name)) {
    throw new Error(`remanence-sdk: duplicate scenario registration '${name}'`)
  }
  registry.set(name, fn)
}

function names () {
  return [...registry.keys()].sort()
}

function usage (name) {
  fs.writeSync(2, `unknown scenario '${name}'; known: ${names().join(' ')}\n`)
  process.exit(EXIT.USAGE)
}

// `<program> --list` prints the registered names (exit 0); `<program> <name>` starts the conversation (with
// the options of start()), runs that scenario and sends `done`; anything else exits 64.
async function main (argv = process.argv.slice(2), options = {}) {
  if (argv.length === 1 && argv[0] === '--list') {
    fs.writeSync(1, names().map(n => n + '\n').join(''))
    process.exit(EXIT.OK)
  }
  if (argv.length !== 1) usage(argv.length ? argv[0] : '')
  const scenario = registry.get(argv[0])
  if (scenario === undefined) usage(argv[0])
  start(options)
  try {
    await scenario()
  } catch (e) {
    fail(`scenario threw: ${e && e.message}`)
  }
  if (secretConsumed !== secretLen) fail(`scenario ${argv[0]} did not read the whole secret`)
  done()
}

module.exports = {
  EXIT,
  start,
  secretLength,
  readSecret,
  checkpoint,
  note,
  derived,
  done,
  fail,
  use,
  mappings,
  mappingAt,
  locate,
  collect,
  turn,
  gcUntil,
  register,
  names,
  main
}
