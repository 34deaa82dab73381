module example.com/remanence/target

go 1.26

require (
	github.com/awnumar/memguard v0.23.0
	golang.org/x/sys v0.35.0
	remanence.dev/remanence v0.0.0
)

require (
	github.com/awnumar/memcall v0.4.0 // indirect
	golang.org/x/crypto v0.41.0 // indirect
)

// The SDK is the folder beside this one (a path replace: no network).
replace remanence.dev/remanence => ../sdk/go
