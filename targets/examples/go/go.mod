module example.com/wipe_demo

go 1.22

require remanence.dev/remanence v0.0.0

// Where the remanence Go SDK is: `remanence sdk go` prints the folder
// (go mod edit -replace remanence.dev/remanence=$(remanence sdk go)).
replace remanence.dev/remanence => ../../sdk/go
