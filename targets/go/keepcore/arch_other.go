//go:build !amd64 && !arm64

package keepcore

// runtime/secret only works on linux/amd64 and linux/arm64; elsewhere the
// filter is not installed (an impossible arch never matches).
const (
	auditArch    = 0
	sysPrlimit64 = ^uint32(0)
	sysSetrlimit = ^uint32(0)
	sysSeccomp   = ^uintptr(0)
)
