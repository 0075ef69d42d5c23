"""Bounded bodies: reading a whole answer without letting its size or its compression exhaust memory.

A body read whole (:func:`read_body`) is bounded in bytes after decompression, so neither a
huge nor a compressed answer can fill memory, and bounded in time, so a server that trickles
bytes cannot hold a request forever. :func:`content_length` reads the announced length.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Iterator

import httpx

from ecephys_dl.errors import SourceError, TransientError

__all__ = ["content_length", "read_body"]

# A length of more than 19 digits is past 2**63: no real file, and int() of thousands of digits
# is refused by Python itself, so such a header is treated as no length at all.
_LENGTH = re.compile(r"\s*([0-9]{1,19})\s*")
# Encodings a whole-body read decodes itself, with a bound on the decoded size; zlib's wbits:
# 16 + MAX_WBITS reads a gzip header, MAX_WBITS a zlib stream.
_DECODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def content_length(response: httpx.Response) -> int | None:
    """The answer's ``Content-Length`` as a number of bytes, or None when absent or not a plain number."""
    match = _LENGTH.fullmatch(response.headers.get("Content-Length") or "")
    return int(match.group(1)) if match is not None else None


def _decoded(raw: Iterator[bytes], encoding: str, limit: int, url: str) -> Iterator[bytes]:
    """The decompressed bytes of ``raw``, never more than ``limit + 1`` of them from one step.

    zlib's ``max_length`` keeps each step small, so a small compressed body that expands a
    thousandfold (a "zip bomb") is stopped by the caller's count before it fills memory.
    """
    wbits = _DECODINGS[encoding]
    decoder = zlib.decompressobj(wbits)
    seen = False
    try:
        for chunk in raw:
            data = chunk
            while data:
                seen = True
                out = decoder.decompress(data, limit + 1)
                if out:
                    yield out
                data = decoder.unconsumed_tail
                if decoder.eof and not data:
                    data = decoder.unused_data
                    if data and wbits != _DECODINGS["gzip"]:
                        raise SourceError(f"{url} sent bytes after the end of its {encoding} body")
                    if data:  # gzip members may follow one another: they are one body
                        decoder = zlib.decompressobj(wbits)
        if seen and not decoder.eof:
            raise SourceError(f"{url} sent a {encoding} body that ends before its compressed stream does")
    except zlib.error as error:
        raise SourceError(f"{url} sent a {encoding} body that does not decompress ({error})") from None


def read_body(response: httpx.Response, *, max_bytes: int, deadline: float | None = None) -> bytes:
    """Read a streamed response's body, refusing more than ``max_bytes`` while reading.

    A gzip or deflate body (sent although we ask for none) is decompressed here, step by
    step, and ``max_bytes`` bounds the decompressed bytes; another encoding is refused.
    ``deadline`` (a :func:`time.monotonic` value) bounds the whole read: past it, the attempt
    fails with a :class:`TransientError`, so a server that trickles bytes cannot hold us forever.
    """
    url = str(response.request.url)
    announced = content_length(response)
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity") and announced is not None and announced > max_bytes:
        raise SourceError(f"{url} announced {announced} bytes, more than the {max_bytes} accepted")
    if encoding not in ("", "identity") and encoding not in _DECODINGS:
        raise SourceError(f"{url} answered with a body encoded as {encoding!r}, which is not read")
    pieces: Iterator[bytes]
    if response.is_stream_consumed:
        # An answer already read whole (built in memory): httpx has decoded it.
        pieces = iter([response.content])
    elif encoding in ("", "identity"):
        pieces = response.iter_raw()
    else:
        # httpx's own decoding would expand a whole network chunk at once: decode the raw bytes here.
        pieces = _decoded(response.iter_raw(), encoding, max_bytes, url)
    chunks: list[bytes] = []
    size = 0
    for chunk in pieces:
        size += len(chunk)
        if size > max_bytes:
            raise SourceError(f"{url} sent more than the {max_bytes} bytes accepted for this answer")
        chunks.append(chunk)
        if deadline is not None and time.monotonic() > deadline:
            raise TransientError("the answer took too long to arrive", url=url)
    return b"".join(chunks)
