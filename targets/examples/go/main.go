// wipe_demo: the test program. The harness runs `build/wipe_demo leaky` or
// `build/wipe_demo clean` (the scenario files leaky.toml and clean.toml) and
// snapshots its memory at each checkpoint.
package main

import (
	"runtime"

	"remanence.dev/remanence"
)

func init() {
	remanence.Register("leaky", func() { run(NewSessionKeyLeaky) })
	remanence.Register("clean", func() { run(NewSessionKeyClean) })
}

func run(newKey func(n int) *SessionKey) {
	k := newKey(remanence.SecretLen())
	remanence.ReadSecret(k.Key()) // straight into the key's own buffer: no copy of ours
	k.Bind()
	remanence.Use(k.Key())
	where := remanence.AddressOf(&k.Key()[0])
	remanence.Checkpoint("in_use", where)
	k.Close()
	remanence.Checkpoint("after_wipe", where)
	runtime.KeepAlive(k)
}

// main: Start, the scenario named by argv[1], Done (exit 0); --list, and exit
// 64 for an unknown name.
func main() { remanence.Main() }
