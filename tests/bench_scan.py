"""Benchmark scan_snapshot against grep and strings|grep on a random image (not a pytest module).

usage: python tests/bench_scan.py [MiB=1024] [strings-slice MiB=64] [dir=$TMPDIR]
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
from remanence.scan.engine import scan_snapshot  # noqa: E402

BLOCK = 16 << 20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(argv: list[str] | str, shell: bool = False) -> tuple[float, str]:
    # stdout goes to a pipe, never /dev/null: GNU grep stops at the first match when it sees /dev/null.
    began = time.perf_counter()
    out = subprocess.run(argv, shell=shell, capture_output=True, env={**os.environ, "LC_ALL": "C"}).stdout
    return time.perf_counter() - began, out.decode().strip()


def make_image(path: Path, size: int, plants: list[tuple[int, bytes]]) -> None:
    """Random bytes written block by block (bounded memory), then the plants written in place."""
    with open(path, "wb") as f:
        for pos in range(0, size, BLOCK):
            f.write(os.urandom(min(BLOCK, size - pos)))
        for offset, data in plants:
            f.seek(offset)
            f.write(data)


def main() -> None:
    size = int(sys.argv[1] if len(sys.argv) > 1 else 1024) << 20
    slice_size = int(sys.argv[2] if len(sys.argv) > 2 else 64) << 20
    workdir = Path(tempfile.mkdtemp(dir=sys.argv[3] if len(sys.argv) > 3 else None))
    secret = Secret("secret", os.urandom(32))
    canary = Secret("canary", os.urandom(32))
    hex_needle = secret.value.hex().encode()
    plants = [(size // 3 + 12345, secret.value), (size // 2 + 777, hex_needle),
              (size - 4096, canary.value), (slice_size // 2, hex_needle), (size // 5, secret.value[10:])]
    image = workdir / "image.bin"
    try:
        make_image(image, size, plants)
        # Four regions with gaps in between, like a small core's load segments.
        quarter = size // 4
        regions = [Region(0x10_0000_0000 * (i + 1), quarter, "rw-p", RegionKind.ANONYMOUS, f"region{i}", i * quarter)
                   for i in range(4)]
        snapshot = Snapshot("bench", image, regions)
        with open(image, "rb") as f:                     # warm the page cache: every tool reads from RAM
            while f.read(BLOCK):
                pass
        rss_before = peak_rss_mib()

        scan_snapshot(snapshot, [secret, canary])        # compile once: the timed run measures scanning
        began = time.perf_counter()
        result = scan_snapshot(snapshot, [secret, canary])
        scan_s = time.perf_counter() - began
        grep_s, grep_count = timed(["grep", "-F", "-a", "-c", hex_needle.decode(), str(image)])
        sliced = workdir / "slice.bin"
        with open(image, "rb") as src, open(sliced, "wb") as dst:
            dst.write(src.read(slice_size))
        strings_s, strings_count = timed(f"strings -a {sliced} | grep -F -c {hex_needle.decode()}", shell=True)

        gb = size / 1e9
        print(f"image {size >> 20} MiB, {result.patterns} patterns (secret + canary, all encodings and fragments)")
        print(f"scan_snapshot   {scan_s:7.3f} s  {gb / scan_s:6.2f} GB/s  hits={len(result.hits)} "
              + ", ".join(f"{h.secret}:{h.encoding}{h.fragment or ''}" for h in result.hits))
        print(f"grep -F -a -c   {grep_s:7.3f} s  {gb / grep_s:6.2f} GB/s  count={grep_count} (1 pattern: raw hex)")
        print(f"strings|grep    {strings_s:7.3f} s  {slice_size / 1e9 / strings_s:6.2f} GB/s  count={strings_count} "
              f"({slice_size >> 20} MiB slice)")
        print(f"speed ratio scan/grep {grep_s / scan_s:.2f} (grep: 1 pattern, scan: {result.patterns}); "
              f"scan/strings|grep {(size / scan_s) / (slice_size / strings_s):.1f}")
        print(f"peak RSS {peak_rss_mib():.1f} MiB (before scanning {rss_before:.1f} MiB), chunk 16 MiB")
    finally:
        for leftover in workdir.iterdir():
            leftover.unlink()
        workdir.rmdir()


if __name__ == "__main__":
    main()
