"""Paragraph-aware chunking into overlapping spans of the original text.

Chunks are ``(start, end)`` character spans of the text, so the stored event keeps the text once
and every chunk is an exact substring. Paragraphs (blank-line separated) are kept whole when
they fit; longer ones are split at sentence ends, then at whitespace, then hard.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?…。])\s+")
_NON_SPACE = re.compile(r"\S")


@dataclass(frozen=True)
class Span:
    start: int
    end: int


def chunk_spans(text: str, size: int, overlap: int) -> list[Span]:
    """Spans of at most ``size`` characters, neighbours sharing about ``overlap`` characters.

    Neighbouring chunks overlap only when a word boundary allows it; a chunk never starts or ends
    with whitespace. An empty or all-blank text has no chunks.
    """
    if size < 1 or overlap < 0 or overlap >= size:
        raise ValueError("need size >= 1 and 0 <= overlap < size")
    units = [u for p in _paragraphs(text) for u in _fit(text, p, size, size - overlap)]
    chunks: list[Span] = []
    i = 0
    start = units[0].start if units else 0
    while i < len(units):
        j = i
        while j + 1 < len(units) and units[j + 1].end - start <= size:
            j += 1
        end = units[j].end
        chunks.append(Span(start, end))
        i = j + 1
        if i < len(units):
            start = _overlap_start(text, chunks[-1], units[i], size, overlap)
    return chunks


def _paragraphs(text: str) -> list[Span]:
    spans = []
    pos = 0
    for brk in _PARAGRAPH_BREAK.finditer(text):
        spans.append(Span(pos, brk.start()))
        pos = brk.end()
    spans.append(Span(pos, len(text)))
    return [t for s in spans if (t := _trim(text, s)) is not None]


def _fit(text: str, span: Span, size: int, piece: int) -> list[Span]:
    """Split a span longer than ``size`` into pieces of at most ``piece`` characters.

    Sentences first, then words, then hard cuts; pieces leave room for the overlap.
    """
    if span.end - span.start <= size:
        return [span]
    pieces: list[Span] = []
    pos = span.start
    for brk in _SENTENCE_END.finditer(text, span.start, span.end):
        pieces.append(Span(pos, brk.start()))
        pos = brk.end()
    pieces.append(Span(pos, span.end))
    out: list[Span] = []
    for p in pieces:
        out.extend(_split_words(text, p, piece))
    return out


def _split_words(text: str, span: Span, size: int) -> list[Span]:
    out = []
    start = span.start
    while span.end - start > size:
        cut = text.rfind(" ", start + 1, start + size + 1)
        if cut <= start:
            cut = start + size  # no space in reach: a hard cut
        piece = _trim(text, Span(start, cut))
        if piece is not None:
            out.append(piece)
        nxt = _NON_SPACE.search(text, cut, span.end)
        if nxt is None:
            return out
        start = nxt.start()
    last = _trim(text, Span(start, span.end))
    if last is not None:
        out.append(last)
    return out


def _overlap_start(text: str, prev: Span, nxt: Span, size: int, overlap: int) -> int:
    """Where the next chunk starts: ``overlap`` characters back, moved forward to a word start."""
    if overlap == 0:
        return nxt.start
    candidate = max(prev.end - overlap, prev.start + 1)
    if candidate > 0 and not text[candidate - 1].isspace():
        space = text.find(" ", candidate, nxt.start)
        if space == -1:
            return nxt.start
        candidate = space
    word = _NON_SPACE.search(text, candidate, nxt.start)
    if word is None or nxt.end - word.start() > size:
        return nxt.start
    return word.start()


def _trim(text: str, span: Span) -> Span | None:
    segment = text[span.start : span.end]
    stripped = segment.strip()
    if not stripped:
        return None
    lead = len(segment) - len(segment.lstrip())
    return Span(span.start + lead, span.start + lead + len(stripped))
