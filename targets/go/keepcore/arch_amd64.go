package keepcore

const (
	auditArch    = 0xC000003E // AUDIT_ARCH_X86_64
	sysPrlimit64 = 302
	sysSetrlimit = 160
	sysSeccomp   = 317
)
