"""Per-document cleaning, in the spirit of LLaMA-1 §2.1: exact deduplication and simple quality filters.

- Deduplication: exact, at the document level, by a 128-bit BLAKE2b hash of the document's UTF-8
  bytes; the first occurrence (in the source's fixed file order) is kept. Applied per source.
- Minimum length: documents with fewer than `min_chars` characters (after stripping surrounding
  whitespace) are dropped.
- Printable share: documents in which less than `min_printable` of the characters are printable
  are dropped. Not printable: C0/C1 control characters other than tab, newline and carriage return,
  and U+FFFD (what invalid UTF-8 became). Any letter of any script is printable.

Every filter is switchable per source (`dedup = false`, `min_chars = 0`, `min_printable = 0`) and
every drop is counted in the manifest.
"""

from __future__ import annotations

import hashlib
import re

_UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")


def doc_hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def printable_share(text: str) -> float:
    if not text:
        return 1.0
    return 1.0 - len(_UNPRINTABLE.findall(text)) / len(text)


def quality_reason(text: str, min_chars: int, min_printable: float) -> str | None:
    """Why a document is dropped ("too_short" / "unprintable"), or None to keep it."""
    if min_chars > 0 and len(text.strip()) < min_chars:
        return "too_short"
    if min_printable > 0 and printable_share(text) < min_printable:
        return "unprintable"
    return None


def hash_fraction(h: bytes) -> float:
    """A document's hash as a number in [0, 1): used to hold out a fixed validation set."""
    return int.from_bytes(h[:8], "big") / 2.0**64
