"""Stable seeds: the same parts give the same seed in every process.

Python's ``hash()`` of a string is salted per process (PYTHONHASHSEED), so seeding from it made each process
sample different view pairs and points. ``stable_seed`` hashes the parts' text with CRC-32 instead.
"""
from __future__ import annotations

import zlib


def stable_seed(*parts) -> int:
    """A non-negative 31-bit seed from ``parts`` (any values; joined as text with a separator that cannot appear
    inside ``str`` of an int, so ``stable_seed(1, 23) != stable_seed(12, 3)``)."""
    text = "\x1f".join(str(p) for p in parts)
    return zlib.crc32(text.encode("utf-8")) & 0x7FFFFFFF
