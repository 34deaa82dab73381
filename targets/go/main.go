// remanence Go target: the built-in scenarios on the Go SDK (../sdk/go, see
// ../PROTOCOL.md and README.md).
//
// Build (as the harness does):
//
//	GOEXPERIMENT=runtimesecret CGO_ENABLED=0 go build -trimpath -o <bin> .
package main

import (
	"os"
	"runtime/debug"

	"example.com/remanence/target/keepcore"
	"remanence.dev/remanence"
)

// register is the SDK's registry, under the name the harness's report looks
// for to link a scenario to its registration line.
var register = remanence.Register

// ballast: see main.
const ballastBytes = 64 << 20

var ballast []byte

func main() {
	if keepcore.Err != nil {
		os.Stderr.WriteString("remanence-target-go: could not keep the core dump limit from memguard's init: " + keepcore.Err.Error() + "\n")
	}
	// No automatic garbage collection: a collection happens exactly where a
	// scenario calls runtime.GC(), so every checkpoint sees the same heap
	// state in every run (see README.md).
	debug.SetGCPercent(-1)
	// No scavenging either: after a collection the runtime's background
	// scavenger hands free pages back to the OS (MADV_DONTNEED, so they read
	// as zeros) down to about 110% of the heap in use, at its own pace. Freed
	// memory would then keep or lose its stale contents depending on timing.
	// A large live ballast (never touched: not resident) keeps the freed
	// memory of any scenario within that 10% slack.
	ballast = make([]byte, ballastBytes)

	remanence.Main()
}
