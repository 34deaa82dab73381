'use strict'
// The test program remanence runs: `node --expose-gc wipe_demo.js leaky|clean`. It gets the key from remanence
// over fd 3 (through remanence-sdk), stops at `in_use` with the key live, wipes it with the twin argv names and
// stops at `after_wipe`; at each stop remanence snapshots this process and looks for the key everywhere.

const sdk = require('remanence-sdk')
const { wipeKeyLeaky, wipeKeyClean } = require('./keys')

const WIPES = { leaky: wipeKeyLeaky, clean: wipeKeyClean }
const wipeKey = process.argv.length === 3 ? WIPES[process.argv[2]] : undefined
if (wipeKey === undefined) {
  console.error('usage: node --expose-gc wipe_demo.js leaky|clean')
  process.exit(sdk.EXIT.USAGE)
}

const length = sdk.start({ requireGc: true }) // `ready 1`, the canary; the key's length
// The key's one home: a Buffer with a backing store of its own in the C heap. Its address (for the report)
// is found before the key is in it: locate() fills it with random markers and looks for them.
const key = Buffer.alloc(length)
const address = sdk.locate(key)
if (address === null) sdk.fail('could not find the key buffer in memory')
sdk.readSecret(key) // straight from fd 3 into the Buffer: no other copy
sdk.use(key)
sdk.checkpoint('in_use', address)

wipeKey(key)
// Full collections, as a long-running program would have had by then: what is found after them is not
// garbage waiting for the collector but memory the program still holds.
sdk.collect()
sdk.checkpoint('after_wipe', address)
sdk.done()
