import base64
import contextlib
import os
import random
import threading

import pytest

import remanence.scan.engine as engine
from remanence.model import Region, RegionKind, Secret, Snapshot
from remanence.scan.encodings import patterns_for
from remanence.scan.engine import ScanError, scan_snapshot
from remanence.snapshot import scratch

rng = random.Random(1234)
SECRET = Secret("secret", bytes(rng.randrange(256) for _ in range(32)))
CANARY = Secret("canary", b"canary-" + bytes(rng.randrange(256) for _ in range(25)))


class FakeImage:
    """A snapshot file of random filler with regions at chosen file offsets and values planted in them."""

    def __init__(self, size: int, seed: int = 7):
        self.data = bytearray(random.Random(seed).randbytes(size))
        self.regions: list[Region] = []

    def region(self, name, start, size, file_offset, kind=RegionKind.ANONYMOUS, fill=None) -> Region:
        region = Region(start=start, size=size, perms="rw-p" if start else "", kind=kind, name=name,
                        file_offset=file_offset)
        if fill is not None:
            self.data[file_offset:file_offset + size] = fill * size
        self.regions.append(region)
        return region

    def plant(self, region: Region, offset: int, value: bytes) -> None:
        self.data[region.file_offset + offset:region.file_offset + offset + len(value)] = value

    def snapshot(self, tmp_path) -> Snapshot:
        path = tmp_path / "image.bin"
        path.write_bytes(bytes(self.data))
        return Snapshot(method="fake", path=path, regions=list(self.regions))


def needle(secret: Secret, encoding: str) -> bytes:
    return next(p.needle for p in patterns_for(secret) if p.encoding == encoding and p.fragment is None)


def hit_keys(result):
    return sorted((h.secret, h.encoding, h.region.name, h.address, h.file_offset, h.length, h.fragment)
                  for h in result.hits)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("chunk_size", [16 << 20, 4096, 1000])
def test_every_planted_copy_found_once(tmp_path, chunk_size, threads):
    image = FakeImage(300_000)
    heap = image.region("[heap]", 0x5555_0000, 65536, 4096)
    stack = image.region("[stack]", 0x7FFD_0000, 32768, 100_000)
    regs = image.region("thread 42 NT_X86_XSTATE", 0, 2048, 200_000, kind=RegionKind.REGISTERS)

    image.plant(heap, 0, SECRET.value)                               # first byte of a region
    image.plant(heap, 4096 - 10, SECRET.value)                       # straddles the 4096 chunk boundary
    image.plant(heap, 8192 - 40, SECRET.value)                       # wholly inside the next chunk's overlap
    image.plant(heap, 3 * 4096 - 32, SECRET.value)                   # ends exactly at a chunk end
    image.plant(heap, 9000, needle(SECRET, "hex-lower"))
    # base64 at alignment 1: the secret one byte into a 3-byte group of a longer stream
    stream = base64.b64encode(os.urandom(4) + SECRET.value + os.urandom(5))
    image.plant(heap, 20000, stream)
    b64_offset = 20000 + stream.index(needle(SECRET, "base64+1"))
    image.plant(heap, 65536 - 32, SECRET.value)                      # last byte of a region
    image.plant(stack, 5000, needle(SECRET, "utf16le:hex-upper"))
    image.plant(stack, 8191 - 40, needle(SECRET, "hex-upper"))       # across the 8192 boundary too
    image.plant(regs, 640, SECRET.value)

    result = scan_snapshot(image.snapshot(tmp_path), [SECRET], chunk_size=chunk_size, threads=threads)
    expected = [
        ("secret", "raw", "[heap]", 0x5555_0000, 4096, 32, None),
        ("secret", "raw", "[heap]", 0x5555_0000 + 4086, 4096 + 4086, 32, None),
        ("secret", "raw", "[heap]", 0x5555_0000 + 8152, 4096 + 8152, 32, None),
        ("secret", "raw", "[heap]", 0x5555_0000 + 12256, 4096 + 12256, 32, None),
        ("secret", "hex-lower", "[heap]", 0x5555_0000 + 9000, 4096 + 9000, 64, None),
        ("secret", "base64+1", "[heap]", 0x5555_0000 + b64_offset, 4096 + b64_offset,
         len(needle(SECRET, "base64+1")), None),
        ("secret", "raw", "[heap]", 0x5555_0000 + 65504, 4096 + 65504, 32, None),
        ("secret", "utf16le:hex-upper", "[stack]", 0x7FFD_0000 + 5000, 105_000, 128, None),
        ("secret", "hex-upper", "[stack]", 0x7FFD_0000 + 8151, 108_151, 64, None),
        ("secret", "raw", "thread 42 NT_X86_XSTATE", None, 200_640, 32, None),
    ]
    assert hit_keys(result) == sorted(expected)
    assert [h.file_offset for h in result.hits] == sorted(h.file_offset for h in result.hits)
    assert result.bytes_scanned == 65536 + 32768 + 2048
    assert result.patterns == len(patterns_for(SECRET))
    assert next(h for h in result.hits if h.address is None).region.kind is RegionKind.REGISTERS


@pytest.mark.parametrize("threads", [1, 2])
def test_chunks_stay_bounded(tmp_path, monkeypatch, threads):
    image = FakeImage(1 << 20)
    region = image.region("[heap]", 0x1000_0000, 1 << 20, 0)
    image.plant(region, 5000, SECRET.value)
    sizes = []

    @contextlib.contextmanager
    def recording(*args):
        with original(*args) as data:
            sizes.append(len(data))
            yield data

    original = engine.chunk_bytes
    monkeypatch.setattr(engine, "chunk_bytes", recording)
    result = scan_snapshot(image.snapshot(tmp_path), [SECRET], chunk_size=8192, threads=threads)
    max_needle = max(len(p.needle) for p in patterns_for(SECRET))
    assert len(sizes) == 128 and max(sizes) == 8192 + max_needle - 1
    assert [h.address for h in result.hits] == [0x1000_0000 + 5000]


def test_two_threads_find_exactly_what_one_finds(tmp_path, monkeypatch):
    """Copies at chunk boundaries, region edges, fragments and long needles: the two-thread scan reports the same
    hits in the same order as the one-thread scan, with the chunks of one big region shared by both threads."""
    rng = random.Random(99)
    long_secret = Secret("long", os.urandom(1100))                  # UTF-16 hex over hyperscan's limit
    image = FakeImage(1_200_000, seed=11)
    big = image.region("big", 0x7000_0000, 700_000, 0)
    small = [image.region(f"small{i}", 0x9000_0000 + i * 0x10000, 5000 + 777 * i, 700_000 + i * 12_000)
             for i in range(8)]
    wide = needle(long_secret, "utf16le:hex-lower")
    image.plant(big, 650_000, wide)
    planted = 0
    chunk = 4096
    for boundary in range(chunk, big.size - chunk, 37 * chunk):      # across, at the end of and after boundaries
        # ends at a boundary, starts at one, straddles the next, lies in the overlap of the one after
        for at in (boundary - 32, boundary, boundary + chunk - 16, boundary + 2 * chunk - 40 - rng.randrange(100)):
            image.plant(big, at, SECRET.value)
            planted += 1
        image.plant(big, boundary + 900, needle(CANARY, "base64+2"))
        image.plant(big, boundary + 1500, bytes(5) + SECRET.value[5:])   # a fragment run
    for region in small:
        image.plant(region, 0, SECRET.value)
        image.plant(region, region.size - 100, SECRET.value)
        image.plant(region, region.size - 10, SECRET.value[:10])        # cut by the region's end
    snapshot = image.snapshot(tmp_path)
    threads_seen = set()
    both_started = threading.Barrier(2, timeout=10)   # each thread's first chunk waits for the other thread
    original = engine.chunk_bytes

    def recording(*args):
        if threading.get_ident() not in threads_seen:
            threads_seen.add(threading.get_ident())
            both_started.wait()
        return original(*args)

    one = scan_snapshot(snapshot, [SECRET, CANARY, long_secret], chunk_size=chunk, threads=1)
    assert one.hits == scan_snapshot(snapshot, [SECRET, CANARY, long_secret], threads=1).hits   # 16 MiB chunks
    monkeypatch.setattr(engine, "chunk_bytes", recording)
    two = scan_snapshot(snapshot, [SECRET, CANARY, long_secret], chunk_size=chunk, threads=2)
    assert len(threads_seen) == 2
    assert two.hits == one.hits
    full_raw = [h for h in one.hits if h.secret == "secret" and h.full and h.encoding == "raw"]
    assert len(full_raw) == planted + 2 * len(small)
    assert [h.address for h in one.hits if h.secret == "long"] == [0x7000_0000 + 650_000]
    assert len([h for h in one.hits if h.fragment == (5, 32)]) == planted // 4


def test_partial_wipe_gives_one_merged_fragment(tmp_path):
    image = FakeImage(50_000)
    heap = image.region("[heap]", 0x4000_0000, 40_000, 1000)
    image.plant(heap, 777, bytes(12) + SECRET.value[12:])           # first 12 bytes wiped
    result = scan_snapshot(image.snapshot(tmp_path), [SECRET], chunk_size=4096)
    assert hit_keys(result) == [("secret", "raw", "[heap]", 0x4000_0000 + 789, 1789, 20, (12, 32))]
    assert not result.hits[0].full


def test_hex_text_with_its_head_overwritten_gives_one_hex_fragment(tmp_path):
    """A dead JS string of the key's hex whose first 8 characters an allocator overwrote (V8's free-list filler):
    28 of the 32 key bytes are still there as text, found as one hex fragment, not as 13 separate windows."""
    image = FakeImage(50_000)
    heap = image.region("old-space", 0x4000_0000, 40_000, 1000)
    text = SECRET.value.hex().encode()
    image.plant(heap, 600, b"\xaa" * 8 + text[8:])
    image.plant(heap, 9000, SECRET.value.hex().upper().encode())        # a whole copy hides its own windows
    result = scan_snapshot(image.snapshot(tmp_path), [SECRET], chunk_size=4096)
    assert hit_keys(result) == [
        ("secret", "hex-lower", "old-space", 0x4000_0000 + 608, 1608, 56, (4, 32)),
        ("secret", "hex-upper", "old-space", 0x4000_0000 + 9000, 10_000, 64, None)]


def test_hole_in_the_middle_gives_two_runs(tmp_path):
    secret = Secret("secret", os.urandom(48))
    image = FakeImage(20_000)
    heap = image.region("[heap]", 0x4000_0000, 20_000, 0)
    image.plant(heap, 3000, secret.value[:20] + bytes(4) + secret.value[24:])
    result = scan_snapshot(image.snapshot(tmp_path), [secret])
    assert [(h.address, h.length, h.fragment) for h in result.hits] == [
        (0x4000_0000 + 3000, 20, (0, 20)), (0x4000_0000 + 3024, 24, (24, 48))]


def test_whole_copy_hides_its_own_fragments_but_not_a_separate_partial_copy(tmp_path):
    image = FakeImage(20_000)
    heap = image.region("[heap]", 0x4000_0000, 20_000, 0)
    image.plant(heap, 100, SECRET.value)
    image.plant(heap, 200, SECRET.value[:20])                        # tail wiped: fragment (0, 20)
    result = scan_snapshot(image.snapshot(tmp_path), [SECRET])
    assert [(h.address, h.fragment) for h in result.hits] == [(0x4000_0000 + 100, None), (0x4000_0000 + 200, (0, 20))]


def test_nul_bytes_no_false_hits_on_zero_memory(tmp_path):
    # The literal=True pitfall: a pattern cut at its first NUL would match all over zeroed pages.
    secret = Secret("secret", b"\x00\x00\x00\x00" + os.urandom(12) + b"\x00\x00\x00\x00")
    image = FakeImage(300_000)
    zeros = image.region("zeros", 0x2000_0000, 262_144, 4096, fill=b"\x00")
    image.plant(zeros, 100_000, secret.value)
    result = scan_snapshot(image.snapshot(tmp_path), [secret], chunk_size=65536)
    assert hit_keys(result) == [("secret", "raw", "zeros", 0x2000_0000 + 100_000, 104_096, 20, None)]


def test_secret_and_canary_in_one_pass(tmp_path):
    image = FakeImage(100_000)
    heap = image.region("[heap]", 0x4000_0000, 90_000, 0)
    image.plant(heap, 1000, SECRET.value)
    image.plant(heap, 50_000, needle(CANARY, "base64"))
    result = scan_snapshot(image.snapshot(tmp_path), [SECRET, CANARY])
    assert [(h.secret, h.encoding, h.address) for h in result.hits] == [
        ("secret", "raw", 0x4000_0000 + 1000), ("canary", "base64", 0x4000_0000 + 50_000)]
    assert result.patterns == len(patterns_for(SECRET)) + len(patterns_for(CANARY))


def test_copy_across_adjacent_regions_not_reported_whole(tmp_path):
    image = FakeImage(100_000)
    left = image.region("left", 0x4000_0000, 8192, 0)
    image.region("right", 0x4000_2000, 8192, 8192)                  # contiguous in memory and in the file
    image.plant(left, 8192 - 16, SECRET.value)                      # 16 bytes in each region
    result = scan_snapshot(image.snapshot(tmp_path), [SECRET])
    assert not [h for h in result.hits if h.full]
    # Each half is a 16-byte window and is honestly reported as a fragment within its own region.
    assert hit_keys(result) == [
        ("secret", "raw", "left", 0x4000_2000 - 16, 8192 - 16, 16, (0, 16)),
        ("secret", "raw", "right", 0x4000_2000, 8192, 16, (16, 32)),
    ]


def test_empty_snapshot_and_errors(tmp_path):
    image = FakeImage(10)
    result = scan_snapshot(image.snapshot(tmp_path), [SECRET])
    assert (result.hits, result.bytes_scanned) == ([], 0)
    with pytest.raises(ScanError, match="too short"):
        scan_snapshot(image.snapshot(tmp_path), [Secret("tiny", b"a")])


def test_secret_longer_than_hyperscan_pattern_limit(tmp_path):
    # UTF-16 hex of a 1500-byte secret is a 6000-byte needle: over hyperscan's expression limit,
    # so it is matched by a prefix and checked whole afterwards.
    secret = Secret("secret", os.urandom(1500))
    wide = needle(secret, "utf16le:hex-lower")
    image = FakeImage(100_000)
    heap = image.region("[heap]", 0x4000_0000, 90_000, 0)
    image.plant(heap, 1000, wide)
    image.plant(heap, 20_000, wide[:-2] + b"x\x00")                 # last character differs: not a copy
    image.plant(heap, 40_000, secret.value)
    following = image.region("next", 0x4001_5F90, 5000, 90_000)     # adjacent in memory and in the file
    image.plant(heap, 90_000 - 3000, wide[:3000])                    # prefix matches, but the rest is in
    image.plant(following, 0, wide[3000:])                           # the next region: not one copy
    result = scan_snapshot(image.snapshot(tmp_path), [secret], chunk_size=4096)
    assert [(h.encoding, h.address, h.length) for h in result.hits] == [
        ("utf16le:hex-lower", 0x4000_0000 + 1000, 6000), ("raw", 0x4000_0000 + 40_000, 1500)]


@pytest.mark.parametrize("threads", [1, 2])
def test_region_past_the_end_of_the_file_is_reported_truncated(tmp_path, threads):
    image = FakeImage(50_000)
    image.region("[heap]", 0x4000_0000, 40_000, 0)
    image.region("cut", 0x5000_0000, 40_000, 30_000)                 # its last 20 000 bytes are not in the file
    with pytest.raises(EOFError, match="region cut at file offset .* is truncated"):
        scan_snapshot(image.snapshot(tmp_path), [SECRET], chunk_size=8192, threads=threads)


def test_scanning_a_scratch_copy_leaves_its_holes_unallocated():
    """procmem's copies keep never-touched memory as holes of a memfd; reading one by mapping it would allocate it."""
    image = FakeImage(1 << 20)
    heap = image.region("[heap]", 0x4000_0000, 8 << 20, 0)
    path = scratch.create("test")
    try:
        with open(path, "r+b") as f:
            f.write(bytes(image.data))                                # 1 MiB of data, then 7 MiB of hole
            f.seek(6 << 20)
            f.write(SECRET.value)                                     # data again inside the hole's range
            f.truncate(8 << 20)
        allocated = os.stat(path).st_blocks
        result = scan_snapshot(Snapshot("fake", path, [heap]), [SECRET], chunk_size=1 << 20)
        assert [h.address for h in result.hits] == [0x4000_0000 + (6 << 20)]
        assert os.stat(path).st_blocks == allocated
    finally:
        scratch.discard(path)
