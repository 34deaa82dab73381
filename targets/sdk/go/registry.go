package remanence

import (
	"os"
	"sort"
	"strings"
)

// The registry is a package-level variable, so it exists before any init
// function of the program's packages runs.
var registry = map[string]func(){}

// Register adds a scenario for Main; call it from an init function. An
// invalid or duplicate name panics, so the program dies before Main runs any
// scenario.
func Register(name string, fn func()) {
	if !validWord(name) || fn == nil {
		panic("remanence: invalid scenario registration '" + name + "'")
	}
	if _, dup := registry[name]; dup {
		panic("remanence: duplicate scenario registration '" + name + "'")
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
	os.Exit(ExitUsage)
}

// Main runs the registered scenario that os.Args[1] names: Start, the
// scenario, Done (exit 0). `--list` prints the names, sorted, one per line,
// and exits 0; an unknown or missing name (or extra arguments) prints
// `unknown scenario 'X'; known: a b c` on stderr and exits 64.
func Main() {
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
		os.Exit(ExitOK)
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
	Start()
	scenario()
	Done()
}
