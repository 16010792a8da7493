"""Plain text, and the byte-to-str decoding every text-based format shares.

Files on disk come in many encodings and nothing says which; the order below goes from certain
(byte order marks) to likely (valid UTF-8, UTF-16 by its NUL pattern) to a guess (legacy 8-bit),
and refuses binary files instead of indexing garbage.
"""

from __future__ import annotations

import codecs
import unicodedata
from pathlib import Path

from rag.errors import LoadError
from rag.loaders.base import Part

_BOMS = (  # UTF-32 first: its little-endian BOM starts with UTF-16's.
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_SAMPLE = 64 * 1024
_MAX_CONTROL_SHARE = 0.05  # text has almost no control characters; binary data ~10% or more
_ALLOWED_CONTROLS = frozenset("\t\n\r\f\v\x1b")


def decode_bytes(data: bytes, path: str | Path) -> str:
    """Decode a text file's bytes to str with newlines normalised to ``\\n``.

    Raises LoadError for empty, whitespace-only or binary content.
    """
    text, _ = decode_with_encoding(data, path)
    return text


def decode_with_encoding(data: bytes, path: str | Path) -> tuple[str, str]:
    """``decode_bytes`` that also says which encoding it used (HTML wants to know a guess from a fact)."""
    text, encoding = _decode(data, path)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise LoadError(path, "empty file")
    return text, encoding


def _decode(data: bytes, path: str | Path) -> tuple[str, str]:
    if not data.strip():
        raise LoadError(path, "empty file")
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding), encoding
            except UnicodeDecodeError as exc:
                raise LoadError(path, f"starts with a {encoding} byte order mark but is not valid {encoding}") from exc
    utf16 = _guess_utf16(data)
    if utf16:
        return data.decode(utf16), utf16
    if b"\x00" in data:
        raise LoadError(path, "binary file, not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text, encoding = _decode_legacy(data)
    else:
        encoding = "utf-8"
    if _looks_binary(text):
        raise LoadError(path, "binary file, not text")
    return text, encoding


def _guess_utf16(data: bytes) -> str | None:
    """UTF-16 without a BOM: mostly-Latin text has a NUL in every other byte, on one side only."""
    sample = data[:_SAMPLE]
    if len(sample) < 4:
        return None
    sample = sample[: len(sample) // 2 * 2]
    half = len(sample) // 2
    even_nuls = sample[0::2].count(0) / half
    odd_nuls = sample[1::2].count(0) / half
    if odd_nuls > 0.3 and even_nuls < 0.05:
        encoding = "utf-16-le"
    elif even_nuls > 0.3 and odd_nuls < 0.05:
        encoding = "utf-16-be"
    else:
        return None
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        return None
    return None if _looks_binary(text) else encoding


def _decode_legacy(data: bytes) -> tuple[str, str]:
    """Not UTF-8: most likely Windows-1252 (Western Europe); charset_normalizer may know better.

    charset_normalizer alone is unreliable on short texts (it reads 'café €' as cp1250 or cp775),
    so its pick wins only with enough non-ASCII bytes to judge and when clearly less chaotic than cp1252.
    """
    try:
        cp1252 = data.decode("cp1252")
    except UnicodeDecodeError:
        cp1252 = None
    # A handful of accented bytes is too little evidence for any detector; cp1252 is the safe bet.
    enough_evidence = sum(byte > 0x7F for byte in data[:_SAMPLE]) >= 16
    guess = _charset_normalizer_guess(data, cp1252 is not None) if enough_evidence or cp1252 is None else None
    if guess:
        return guess
    if cp1252 is not None:
        return cp1252, "cp1252"
    return data.decode("latin-1"), "latin-1"


def _charset_normalizer_guess(data: bytes, cp1252_ok: bool) -> tuple[str, str] | None:
    try:
        from charset_normalizer import from_bytes
    except ImportError:
        return None
    try:
        matches = list(from_bytes(data[:_SAMPLE]))
    except Exception:  # a guess that fails is no guess
        return None
    if not matches:
        return None
    best = matches[0]
    cp1252_chaos = next((m.chaos for m in matches if m.encoding == "cp1252"), None)
    if cp1252_ok and cp1252_chaos is not None and best.chaos > cp1252_chaos - 0.1:
        return None
    if best.chaos > 0.2:
        return None
    try:
        return data.decode(best.encoding), best.encoding
    except (UnicodeDecodeError, LookupError):
        return None


def _looks_binary(text: str) -> bool:
    sample = text[:_SAMPLE]
    if not sample:
        return False
    controls = sum(
        1 for ch in sample if ch not in _ALLOWED_CONTROLS and unicodedata.category(ch) == "Cc"
    )
    return controls / len(sample) > _MAX_CONTROL_SHARE


def load_text(path: Path, data: bytes, **_options: object) -> list[Part]:
    return [Part(decode_bytes(data, path), {"title": ""})]
