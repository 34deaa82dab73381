"""keystore.py: the code under test, a key holder whose wipe() promises to erase the key.

Two twins with the same interface. LeakyKey makes the usual mistake; CleanKey keeps its promise.
"""

from __future__ import annotations


class LeakyKey:
    """Keeps the key as an immutable `bytes` copy and wipes the caller's buffer: it looks careful."""

    def __init__(self, key: bytearray) -> None:
        self.secret = bytes(key)        # a copy that nothing can overwrite: bytes are immutable
        key[:] = bytes(len(key))        # the caller's buffer is zeroed in place

    def wipe(self) -> None:
        # Dropping the last reference frees the bytes object's memory; it does not erase it. The
        # allocator reuses the block later, or never: until then the key is still there.
        del self.secret


class CleanKey:
    """Keeps the caller's own bytearray (no copy) and zeroes it in place."""

    def __init__(self, key: bytearray) -> None:
        self.secret = key

    def wipe(self) -> None:
        # A slice assignment of the same length copies the zeros into the existing buffer (memcpy):
        # the buffer is overwritten, not replaced.
        self.secret[:] = bytes(len(self.secret))
