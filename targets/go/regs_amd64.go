package main

import "golang.org/x/sys/cpu"

//go:noescape
func loadAll(p *byte, avx, avx512 bool)

//go:noescape
func loadAllAndSignal(p *byte, avx, avx512 bool, pid, tid int)

func vectorFeatures() (avx, avx512 bool) {
	return cpu.X86.HasAVX, cpu.X86.HasAVX512F && cpu.X86.HasAVX512VL
}

func registerSets(avx, avx512 bool) string {
	switch {
	case avx512:
		return "general+sse+avx+avx512"
	case avx:
		return "general+sse+avx"
	}
	return "general+sse"
}

// loadRegisters puts the first 32 bytes at p (which must have 32 readable
// bytes) into general and vector registers (see regs_amd64.s), and says
// which register sets it used.
func loadRegisters(p *byte) string {
	avx, avx512 := vectorFeatures()
	loadAll(p, avx, avx512)
	return registerSets(avx, avx512)
}

// loadRegistersAndSignal does the same, then sends SIGURG to the current
// thread (tid) from the assembly, registers still loaded.
func loadRegistersAndSignal(p *byte, pid, tid int) string {
	avx, avx512 := vectorFeatures()
	loadAllAndSignal(p, avx, avx512, pid, tid)
	return registerSets(avx, avx512)
}
