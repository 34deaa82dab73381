module example.com/remanence/target

go 1.26

require (
	github.com/awnumar/memguard v0.23.0
	golang.org/x/sys v0.35.0
)

require (
	github.com/awnumar/memcall v0.4.0 // indirect
	golang.org/x/crypto v0.41.0 // indirect
)
