//go:build remanence_duplicate_for_test

package main

// Test-only build (go build -tags remanence_duplicate_for_test): a second
// registration of an existing name must abort the program before main runs
// any scenario.
func init() { register("secret.return", func() {}) }
