"""Benchmark scan_snapshot (one thread and two) against `grep -F -a -c -f` with the same patterns (not a pytest module).

usage: python tests/bench_scan.py [MiB=2048] [repeats=3] [dir=/tmp]

The image is random bytes with a 32-byte secret and canary planted, written to a temporary folder, read once so
every tool reads it from the page cache, and deleted at the end. Each tool runs `repeats` times; the best time counts
(the machine is shared: the best run is the one least disturbed).

grep gets exactly remanence's needles (every encoding and fragment of both secrets), one per line of its -f file.
A grep -F pattern cannot hold a newline, so the secret and canary are drawn without a 0x0a byte (no needle then has
one); NUL bytes are fine (GNU grep -F -f matches them exactly). grep counts matching lines, remanence copies.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from remanence.model import Region, RegionKind, Secret, Snapshot  # noqa: E402
from remanence.scan.encodings import patterns_for  # noqa: E402
from remanence.scan.engine import scan_snapshot  # noqa: E402

BLOCK = 16 << 20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its waited-for children so far."""
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def best_of(repeats: int, run) -> tuple[float, float, object]:
    """The shortest wall time of `repeats` calls of run(), the least CPU time one took, and what the fastest returned.
    CPU time does not grow when other work shares the cores, so it compares the tools on a busy machine too."""
    runs = []
    for _ in range(repeats):
        began, cpu_began = time.perf_counter(), cpu_seconds()
        result = run()
        runs.append((time.perf_counter() - began, cpu_seconds() - cpu_began, result))
    wall, _, result = min(runs, key=lambda r: r[0])
    return wall, min(r[1] for r in runs), result


def grep_count(patterns_file: Path, image: Path) -> str:
    # stdout goes to a pipe, never /dev/null: GNU grep stops at the first match when it sees /dev/null.
    return subprocess.run(["grep", "-F", "-a", "-c", "-f", str(patterns_file), str(image)], capture_output=True,
                          env={**os.environ, "LC_ALL": "C"}).stdout.decode().strip()


def secret_without_newline(label: str) -> Secret:
    """A 32-byte secret none of whose patterns (its key schedules included) holds a newline: grep -f reads one
    needle per line."""
    while True:
        secret = Secret(label, os.urandom(32))
        if not any(b"\n" in p.needle for p in patterns_for(secret)):
            return secret


def make_image(path: Path, size: int, plants: list[tuple[int, bytes]]) -> None:
    """Random bytes written block by block (bounded memory), then the plants written in place."""
    with open(path, "wb") as f:
        for pos in range(0, size, BLOCK):
            f.write(os.urandom(min(BLOCK, size - pos)))
        for offset, data in plants:
            f.seek(offset)
            f.write(data)


def main() -> None:
    size = int(sys.argv[1] if len(sys.argv) > 1 else 2048) << 20
    repeats = int(sys.argv[2] if len(sys.argv) > 2 else 3)
    workdir = Path(tempfile.mkdtemp(dir=sys.argv[3] if len(sys.argv) > 3 else "/tmp"))
    secret, canary = secret_without_newline("secret"), secret_without_newline("canary")
    needles = [p.needle for s in (secret, canary) for p in patterns_for(s)]
    assert not any(b"\n" in n for n in needles)
    plants = [(size // 3 + 12345, secret.value), (size // 2 + 777, secret.value.hex().encode()),
              (size - 4096, canary.value), (size // 5, secret.value[10:])]
    image, patterns_file = workdir / "image.bin", workdir / "patterns"
    try:
        make_image(image, size, plants)
        patterns_file.write_bytes(b"\n".join(needles) + b"\n")
        # Four regions, like a small core's load segments: each 512 MiB, so one region alone is bigger than a chunk.
        quarter = size // 4
        regions = [Region(0x10_0000_0000 * (i + 1), quarter, "rw-p", RegionKind.ANONYMOUS, f"region{i}", i * quarter)
                   for i in range(4)]
        snapshot = Snapshot("bench", image, regions)
        with open(image, "rb") as f:                     # warm the page cache: every tool reads from RAM
            while f.read(BLOCK):
                pass
        rss_before = peak_rss_mib()
        scan_snapshot(snapshot, [secret, canary])        # compile once: the timed runs measure scanning
        one_s, one_cpu, one = best_of(repeats, lambda: scan_snapshot(snapshot, [secret, canary], threads=1))
        two_s, two_cpu, two = best_of(repeats, lambda: scan_snapshot(snapshot, [secret, canary], threads=2))
        assert one.hits == two.hits
        grep_s, grep_cpu, count = best_of(repeats, lambda: grep_count(patterns_file, image))
        cat_s, cat_cpu, _ = best_of(repeats, lambda: subprocess.run(["cat", str(image)], stdout=subprocess.DEVNULL))

        gb = size / 1e9
        print(f"image {size >> 20} MiB in {workdir} (page cache), {len(needles)} patterns: secret + canary, every "
              f"encoding and fragment; best of {repeats}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus")
        print("                      wall      speed     CPU time  GB per CPU-second")
        for name, wall, cpu, detail in (
                ("remanence 1 thread", one_s, one_cpu, f"hits={len(one.hits)} "
                 + ", ".join(f"{h.secret}:{h.encoding}{h.fragment or ''}" for h in one.hits)),
                ("remanence 2 threads", two_s, two_cpu, f"hits={len(two.hits)} (identical)"),
                ("grep -F -a -c -f", grep_s, grep_cpu, f"lines matching={count} (LC_ALL=C, the same {len(needles)} "
                 "needles, NUL bytes included, none holding a newline)"),
                ("cat > /dev/null", cat_s, cat_cpu, "")):
            print(f"{name:20} {wall:7.3f} s {gb / wall:6.2f} GB/s {cpu:7.3f} s {gb / cpu:8.2f}   {detail}")
        print(f"ratios (wall): 2 threads / 1 thread {one_s / two_s:.2f}x; remanence 2 threads / grep "
              f"{grep_s / two_s:.1f}x; 1 thread / grep {grep_s / one_s:.1f}x")
        print(f"ratios (CPU time): remanence 2 threads / grep {grep_cpu / two_cpu:.1f}x; on two otherwise idle cores "
              f"2 threads would scan at about {2 * gb / two_cpu:.2f} GB/s (2 x GB per CPU-second)")
        print(f"peak RSS {peak_rss_mib():.1f} MiB (before scanning {rss_before:.1f} MiB), chunk 16 MiB")
    finally:
        for leftover in workdir.iterdir():
            leftover.unlink()
        workdir.rmdir()


if __name__ == "__main__":
    main()
