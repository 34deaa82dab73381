module remanence.dev/remanence

go 1.22
