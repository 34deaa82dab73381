// remanence Go target: the scenario registry and main() (see ../PROTOCOL.md
// and README.md).
//
// Build (as the harness does):
//
//	GOEXPERIMENT=runtimesecret CGO_ENABLED=0 go build -trimpath -o <bin> .
package main

import (
	"os"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"example.com/remanence/target/keepcore"
)

// The registry is a package-level variable, so it exists before any init()
// function of the scenario files runs.
var registry = map[string]func(){}

// ballast: see main.
const ballastBytes = 64 << 20

var ballast []byte

// register adds a scenario; called from init functions. A duplicate or
// invalid name aborts the program before main runs any scenario.
func register(name string, fn func()) {
	if !validWord(name) || fn == nil {
		panic("remanence-target-go: invalid scenario registration '" + name + "'")
	}
	if _, dup := registry[name]; dup {
		panic("remanence-target-go: duplicate scenario registration '" + name + "'")
	}
	registry[name] = fn
}

func sortedNames() []string {
	names := make([]string, 0, len(registry))
	for name := range registry {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

func dieUsage(name string) {
	os.Stderr.WriteString("unknown scenario '" + name + "'; known: " + strings.Join(sortedNames(), " ") + "\n")
	os.Exit(exitUsage)
}

// envSize parses a decimal environment variable in [lo, hi].
func envSize(name string, lo, hi int) (int, bool) {
	s, found := syscall.Getenv(name)
	if !found || s == "" {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < lo || v > hi {
		return 0, false
	}
	return v, true
}

func main() {
	args := os.Args[1:]
	if len(args) == 1 && args[0] == "--list" {
		names := sortedNames()
		out := strings.Join(names, "\n")
		if len(names) > 0 {
			out += "\n"
		}
		if _, err := os.Stdout.WriteString(out); err != nil {
			os.Exit(1)
		}
		os.Exit(exitOK)
	}
	if len(args) != 1 {
		name := ""
		if len(args) > 0 {
			name = args[0]
		}
		dieUsage(name)
	}
	scenario, found := registry[args[0]]
	if !found {
		dieUsage(args[0])
	}

	if keepcore.Err != nil {
		os.Stderr.WriteString("remanence-target-go: could not keep the core dump limit from memguard's init: " + keepcore.Err.Error() + "\n")
	}

	// fd 3 must be there; Go ignores SIGPIPE on fds other than 1 and 2, so a
	// vanished harness shows up as a write error (exit 75), not a signal.
	if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, controlFD, syscall.F_GETFD, 0); errno != 0 {
		channelClosed()
	}

	sendLine("ready ", "1")

	if proto, found := syscall.Getenv("REMANENCE_PROTOCOL"); found && proto != "1" {
		fail("unsupported REMANENCE_PROTOCOL (this target speaks 1)")
	}
	n, ok := envSize("REMANENCE_SECRET_LEN", 1, secretMax)
	if !ok {
		fail("REMANENCE_SECRET_LEN must be an integer in 1..%d", secretMax)
	}
	secretLength = n
	m, ok := envSize("REMANENCE_CANARY_LEN", 1, canaryMax)
	if !ok {
		fail("REMANENCE_CANARY_LEN must be an integer in 1..%d", canaryMax)
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

	canaryKeep = make([]byte, m)
	readExact(canaryKeep)

	scenario()

	done()
	os.Exit(exitOK)
}
