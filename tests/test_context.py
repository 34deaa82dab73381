import os

from remanence.model import Hit, Region, RegionKind, Secret, Snapshot
from remanence.scan.context import hit_context, secret_material


def test_window_masks_the_hit_and_nearby_secret_material(tmp_path):
    # A fixed secret: with a random one, a byte next to a copy continues some 4-byte run of an encoded form now
    # and then (1 in 256 for the word after the key in its AES key schedule), and the masked range grows by one.
    secret = Secret("secret", bytes.fromhex("3f9c0e71a2d45b86c7e1309f5a2b64d8e0f17c3a9b5d2e4f6a8c1b3d5e7f9012"))
    filler = bytes(range(100, 164))
    # a full copy, then a 6-byte leftover of the secret's tail a little further on
    data = filler + secret.value + b"\x00" * 10 + secret.value[-6:] + filler
    path = tmp_path / "img"
    path.write_bytes(b"\xff" * 16 + data)
    region = Region(0x1000, len(data), "rw-p", RegionKind.HEAP, "[heap]", 16)
    hit = Hit("secret", "raw", 0x1000 + 64, 16 + 64, 32, region)
    ctx = hit_context(Snapshot("procmem", path, [region]), hit, secret_material(secret))
    assert ctx.start == -64 and len(ctx.data) == 64 + 32 + 64
    assert ctx.secret_ranges[0] == (64, 96)
    assert (106, 112) in ctx.secret_ranges
    masked = ctx.masked_hex()
    assert masked[64:96] == ["**"] * 32 and masked[106:112] == ["**"] * 6
    assert masked[:64] == [f"{b:02x}" for b in filler]
    assert ctx.masked_hex(reveal=True)[64:96] == [f"{b:02x}" for b in secret.value]


def test_window_stays_inside_the_region(tmp_path):
    secret = Secret("secret", os.urandom(32))
    path = tmp_path / "img"
    path.write_bytes(b"\xaa" * 100 + secret.value + b"\xbb" * 8 + b"\xcc" * 100)
    region = Region(0x2000, 40, "rw-p", RegionKind.ANONYMOUS, "", 100)
    ctx = hit_context(Snapshot("procmem", path, [region]), Hit("secret", "raw", 0x2000, 100, 32, region), secret_material(secret))
    assert ctx.start == 0 and ctx.data == secret.value + b"\xbb" * 8
