"""FIPS-197 AES key expansion (section 5.2), pure Python: what a wiped AES key leaves behind when its cipher
object survives. Only the encryption schedule: it is what every implementation keeps."""
from __future__ import annotations

ROUND_KEY_SIZE = 16


def _sbox() -> bytes:
    """The S-box of FIPS-197 5.1.1: the multiplicative inverse in GF(2^8), then the affine transformation."""
    def times(a: int, b: int) -> int:
        product = 0
        while b:
            if b & 1:
                product ^= a
            a = ((a << 1) ^ 0x11B) if a & 0x80 else a << 1
            b >>= 1
        return product

    inverse = [0] * 256
    for a in range(1, 256):
        inverse[a] = next(b for b in range(1, 256) if times(a, b) == 1)
    rotl = lambda x, n: ((x << n) | (x >> (8 - n))) & 0xFF   # noqa: E731
    return bytes(b ^ rotl(b, 1) ^ rotl(b, 2) ^ rotl(b, 3) ^ rotl(b, 4) ^ 0x63 for b in inverse)


SBOX = _sbox()
ROUNDS = {16: 10, 24: 12, 32: 14}    # Nr by key length in bytes


def expand_key(key: bytes) -> bytes:
    """The Nb*(Nr+1) words w[0..] of the expanded key, each in FIPS byte order (round key r = bytes [16r, 16r+16)).
    176, 208 or 240 bytes for a 16-, 24- or 32-byte key."""
    if len(key) not in ROUNDS:
        raise ValueError(f"an AES key is 16, 24 or 32 bytes, not {len(key)}")
    nk, total = len(key) // 4, 4 * (ROUNDS[len(key)] + 1)
    words = [key[4 * i:4 * i + 4] for i in range(nk)]
    rcon = 1
    for i in range(nk, total):
        temp = words[i - 1]
        if i % nk == 0:
            temp = bytes(SBOX[b] for b in temp[1:] + temp[:1])   # SubWord(RotWord(temp))
            temp = bytes([temp[0] ^ rcon]) + temp[1:]
            rcon = (rcon << 1) ^ (0x11B if rcon & 0x80 else 0)
        elif nk > 6 and i % nk == 4:
            temp = bytes(SBOX[b] for b in temp)
        words.append(bytes(a ^ b for a, b in zip(words[i - nk], temp)))
    return b"".join(words)


def word_swapped(schedule: bytes) -> bytes:
    """The schedule as 32-bit words stored in little-endian order (each word's 4 bytes reversed): how code that keeps
    the schedule as uint32 values built big-endian from the key lays it out on x86."""
    return b"".join(schedule[i:i + 4][::-1] for i in range(0, len(schedule), 4))
