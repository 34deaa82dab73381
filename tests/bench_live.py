"""Benchmark a live procmem capture + scan against gdb's gcore alone, on a process with 1 GiB resident (not a pytest
module).

usage: python tests/bench_live.py [MiB=1024] [repeats=3]

The process is a Python program holding a bytearray of random bytes with a 32-byte secret planted in its middle
(sent over stdin, never argv). Measured, best of `repeats` (the machine is shared):
  streamed   capture_procmem: stop, read /proc/PID/mem straight into the two-thread scan, resume
  copied     capture_procmem(keep=True): stop, copy into a scratch file, scan the copy, resume (kept snapshots)
  gcore      take_gcore alone, as the gcore method takes it (gdb attaches, dumps into a scratch file, the core is
             parsed), with no scan
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from remanence.model import Secret  # noqa: E402
from remanence.scan.engine import scan_snapshot  # noqa: E402
from remanence.snapshot import dispose_snapshot  # noqa: E402
from remanence.snapshot.gcore import take_gcore  # noqa: E402
from remanence.snapshot.procmem import capture_procmem  # noqa: E402
from bench_scan import best_of  # noqa: E402   (beside this script)

HOLDER = r"""
import os, sys
size = int(sys.argv[1])
memory = bytearray(size)
for pos in range(0, size, 16 << 20):
    memory[pos:pos + (16 << 20)] = os.urandom(min(16 << 20, size - pos))
memory[size // 2:size // 2 + 32] = sys.stdin.buffer.read(32)
print(hex(id(memory)), flush=True)
sys.stdin.buffer.read()
"""


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    size = int(sys.argv[1] if len(sys.argv) > 1 else 1024) << 20
    repeats = int(sys.argv[2] if len(sys.argv) > 2 else 3)
    secret, canary = Secret("secret", os.urandom(32)), Secret("canary", os.urandom(32))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(size)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        holder.stdin.write(secret.value)
        holder.stdin.flush()
        holder.stdout.readline()
        scan_snapshot_of = lambda snapshot: scan_snapshot(snapshot, [secret, canary])   # noqa: E731
        scan_snapshot_of(capture_procmem(holder.pid, lambda s: s, keep=True)[0])           # compile once, warm up

        def streamed():
            return capture_procmem(holder.pid, scan_snapshot_of)

        def copied():
            snapshot, result = capture_procmem(holder.pid, scan_snapshot_of, keep=True)
            dispose_snapshot(snapshot, None, "")
            return snapshot, result

        def gcore():
            snapshot = take_gcore(holder.pid, dump_all=False)
            size = os.stat(snapshot.path).st_size
            dispose_snapshot(snapshot, None, "")
            return size

        streamed_s, streamed_cpu, (snapshot, result) = best_of(repeats, streamed)
        copied_s, copied_cpu, (_, copied_result) = best_of(repeats, copied)
        gcore_s, gcore_cpu, core_size = best_of(repeats, gcore)
        found = [h for h in result.hits if h.secret == "secret" and h.full]
        assert found and [h.address for h in found] == [h.address for h in copied_result.hits if h.secret == "secret"]

        print(f"process {holder.pid}: {resident_mib(holder.pid):.0f} MiB resident; best of {repeats}; "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus")
        print(f"streamed capture+scan {streamed_s:6.3f} s wall, {streamed_cpu:6.3f} s CPU  ({result.bytes_scanned / 1e9:.2f}"
              f" GB scanned in {result.duration_s:.3f} s; secret found at {', '.join(hex(h.address) for h in found)})")
        print(f"copied capture+scan   {copied_s:6.3f} s wall, {copied_cpu:6.3f} s CPU  (kept-snapshot path)")
        print(f"gcore alone           {gcore_s:6.3f} s wall, {gcore_cpu:6.3f} s CPU  (core {core_size / 1e9:.2f} GB; "
              "CPU of gdb and of this process, not the kernel's work on the target's behalf)")
        print(f"ratio gcore / streamed capture+scan {gcore_s / streamed_s:.2f}x; copied / streamed "
              f"{copied_s / streamed_s:.2f}x")
        print(f"notes: {snapshot.notes[-1]}")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


if __name__ == "__main__":
    main()
