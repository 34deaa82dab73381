//go:build !amd64

package main

import "syscall"

// loadRegisters: no explicit register loads on this architecture; the AES
// work of secret.registers is all there is.
func loadRegisters(p *byte) string { return "none" }

// loadRegistersAndSignal: only the signal.
func loadRegistersAndSignal(p *byte, pid, tid int) string {
	syscall.Tgkill(pid, tid, syscall.SIGURG)
	return "none"
}
