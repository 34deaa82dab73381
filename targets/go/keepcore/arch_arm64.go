package keepcore

const (
	auditArch    = 0xC00000B7 // AUDIT_ARCH_AARCH64
	sysPrlimit64 = 261
	sysSetrlimit = 164
	sysSeccomp   = 277
)
