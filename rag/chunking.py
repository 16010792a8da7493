"""Document -> Chunks, with langchain-text-splitters choosing where to cut.

Sizes are counted in the embedding model's own tokens, so a chunk never holds more than the model
can see and nothing is silently truncated at embedding time. Langchain returns strings, not
positions, so every piece is located in the document here (never ``str.find`` from the start,
which is wrong for repeated text), then checked: a piece over the limit is cut again at token
boundaries, and any non-whitespace text no piece covers becomes a chunk of its own. Whatever the
splitter does, ``document.text[chunk.start:chunk.end] == chunk.text`` and every chunk fits.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from bisect import bisect_right
from typing import TYPE_CHECKING, Literal

import tokenizers
from langchain_text_splitters import (
    Language,
    RecursiveCharacterTextSplitter,
    Tokenizer,
    split_text_on_tokens,
)

from rag.errors import ConfigError, ModelError
from rag.text import FRONT_MATTER, one_line
from rag.types import CONTEXT_SEPARATOR, Chunk, Document

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

HEADER_JOIN = " > "
# Formats whose loaders write headings as ATX lines (``# Title``): their heading path is known for
# every strategy, not only ``markdown``. Other text (plain text, code, records) may hold "# " lines
# that are not headings.
HEADED_FORMATS = frozenset({"markdown", "html", "docx", "pptx", "xlsx"})
# A chunk's context (title and heading path) takes at most this share of its tokens: a deep path of
# long headings is cut, never the chunk's own text.
CONTEXT_SHARE = 0.25

Span = tuple[int, int]
Counted = tuple[int, int, int]  # start, end, tokens
HeadingPath = tuple[str, ...]  # the headings above a place in the text, outermost first

_ATX_HEADER = re.compile(r" {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


def chunk_id(document_id: str, start: int, text: str) -> str:
    """Deterministic id from document identity, position and content: re-ingesting is a no-op."""
    content = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    key = f"{document_id}:{start}:{content}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(key).hexdigest()[:32]


class Chunker:
    """Splits documents into chunks of at most ``limit`` tokens of the embedding model.

    ``recursive`` cuts at paragraphs, then lines, then words; ``markdown`` first cuts at headers
    (outside code fences); ``token`` takes fixed token windows. Where the text has headings (the
    markdown strategy, or a format in HEADED_FORMATS) each chunk records the heading path above its
    start in ``metadata["headers"]``.

    With ``context`` (``auto`` is on: the pipeline decides ``auto`` from the collection's record),
    each chunk also records its context in ``metadata["context"]``: the document's title and that
    heading path, less what the chunk's own first lines already show. The indexer embeds and indexes
    ``context + CONTEXT_SEPARATOR + text`` (rag.types.indexed_text), never storing it, so offsets
    stay exact; the chunk is cut that much shorter, so the whole still fits the model.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        strategy: str = "recursive",
        chunk_size: int = 256,
        chunk_overlap: int = 32,
        max_tokens: int | None = None,
        context: bool | Literal["auto"] = "auto",
    ) -> None:
        # Settings are checked by rag.config; what only the model knows is checked here.
        limit = chunk_size if max_tokens is None else min(chunk_size, max_tokens)
        if chunk_overlap >= limit:
            capped = f" (chunking.chunk_size {chunk_size} capped by the model's {max_tokens})"
            raise ConfigError(
                f"chunking.chunk_overlap ({chunk_overlap}) must be smaller than the chunk size "
                f"{limit}{capped if limit < chunk_size else ''}"
            )
        if not getattr(tokenizer, "is_fast", False):
            raise ModelError(
                "chunking needs a fast tokenizer (a model folder with tokenizer.json) to map tokens to "
                "character offsets"
            )
        self.strategy = strategy
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self.context = context is True or context == "auto"
        self._limit = limit
        # The most tokens a context may take; the chunk's own text keeps more than the overlap.
        self._context_cap = min(int(limit * CONTEXT_SHARE), limit - chunk_overlap - 1)
        # A private copy of the Rust tokenizer: the shared one may carry truncation/padding settings
        # (MiniLM's pads and truncates to 128), and calling it directly skips transformers' overhead.
        self._encoder = tokenizers.Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._encoder.no_truncation()
        self._encoder.no_padding()
        # Langchain measures the same piece several times while merging: counts are cached per document.
        self._counts: dict[str, int] = {}
        # encode_batch_fast (tokenizers >= 0.21) skips offsets, which counting does not need.
        self._encode_many = getattr(self._encoder, "encode_batch_fast", self._encoder.encode_batch)
        # Separators are kept in the pieces, so pieces are contiguous substrings that can be located.
        keep: Literal["start", "end"]
        if strategy == "markdown":
            # Sections are already cut at headers, so langchain's header separator (which also fires
            # on "# comments" in code) is left out; keeping separators at the end of a piece leaves
            # a closing ``` with its code.
            separators = [
                sep
                for sep in RecursiveCharacterTextSplitter.get_separators_for_language(Language.MARKDOWN)
                if "#" not in sep
            ]
            is_regex, keep = True, "end"
        else:
            separators, is_regex, keep = ["\n\n", "\n", " ", ""], False, "start"
        keep_separator: Literal["start", "end"] = "end" if keep == "end" else "start"
        self._first_cuts = [re.compile(sep if is_regex else re.escape(sep)) for sep in separators if sep]
        self._keep_end = keep == "end"
        self._separators = (separators, is_regex, keep_separator)
        self._splitters: dict[int, RecursiveCharacterTextSplitter] = {}  # by chunk limit
        self._separator_tokens = self.count_tokens(CONTEXT_SEPARATOR)

    @property
    def limit(self) -> int:
        """The most tokens a chunk may hold: ``min(chunk_size, max_tokens)``."""
        return self._limit

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` without special tokens, as the embedding model will see them."""
        return len(self._encoder.encode(text, add_special_tokens=False))

    def split(self, document: Document) -> list[Chunk]:
        """The document's chunks in order; empty for a blank document."""
        text = document.text
        headed = self.strategy == "markdown" or document.metadata.get("format") in HEADED_FORMATS
        sections = _markdown_sections(text) if headed else [(0, len(text), ())]
        title = one_line(document.metadata.get("title") or "", limit=None)
        self._counts.clear()
        # (start, end, heading path, tokens kept for the context)
        spans: list[tuple[int, int, HeadingPath, int]] = []
        if self.strategy == "markdown":
            for start, end, path in sections:
                reserve = self._room(text[start:end], title, path, self._reserve(title, [path]))
                spans.extend((start + a, start + b, path, reserve)
                             for a, b, _ in self._spans(text[start:end], self._limit - reserve))
        else:  # cut as one text; each chunk takes the heading path where it starts
            reserve = self._room(text, title, sections[0][2], self._reserve(title, [p for _, _, p in sections]))
            starts = [start for start, _, _ in sections]
            spans.extend((a, b, sections[bisect_right(starts, a) - 1][2], reserve)
                         for a, b, _ in self._spans(text, self._limit - reserve))
        self._counts.clear()

        base = {key: value for key, value in document.metadata.items() if value is not None}
        tables = markdown_tables(text)
        chunks = []
        for index, (start, end, path, reserve) in enumerate(spans):
            piece = text[start:end]
            metadata = {**base, "chunk_index": index, "start": start, "end": end}
            if headed:
                metadata["headers"] = HEADER_JOIN.join(path)
            context = self._context(title, path, piece, reserve) if reserve else ""
            if context:
                metadata["context"] = context
            table_header = header_of_rows(text, tables, start)
            if table_header is not None:
                metadata["table_header"] = table_header
            chunk = Chunk(chunk_id(document.id, start, piece), document.id, piece, start, end, metadata)
            chunks.append(chunk)
        return chunks

    def _reserve(self, title: str, paths: list[HeadingPath]) -> int:
        """Tokens kept free in each chunk for the longest context these heading paths can give (0
        without ``context``), at most the context cap."""
        if not self.context or self._context_cap <= 0:
            return 0
        longest = max(self.count_tokens(HEADER_JOIN.join(_parts(title, path))) for path in paths)
        return min(longest + self._separator_tokens, self._context_cap) if longest else 0

    def _room(self, text: str, title: str, path: HeadingPath, reserve: int) -> int:
        """``reserve``, or none for a text that fits one chunk whole and already shows its context (it
        opens with its title, no heading above it): it stays one chunk, as without context."""
        if reserve and not _unshown(title, path, text) and self.count_tokens(text.strip()) <= self._limit:
            return 0
        return reserve

    def _context(self, title: str, path: HeadingPath, piece: str, reserve: int) -> str:
        """The chunk's context: its title and heading path, less what its first lines already show
        (a chunk that opens with its title or its own section's heading), cut to fit ``reserve``
        tokens with the separator, and so the whole indexed text fits the limit."""
        context = self._fit(HEADER_JOIN.join(_unshown(title, path, piece)), reserve - self._separator_tokens)
        # A tokenizer whose counts do not add up where the two texts meet: shorten until it fits.
        while context and self.count_tokens(context + CONTEXT_SEPARATOR + piece) > self._limit:
            context = self._fit(context, self.count_tokens(context) - 1)
        return context

    def _fit(self, text: str, tokens: int) -> str:
        """``text`` cut at a token boundary to at most ``tokens`` tokens ("" when none fit). A cut can
        tokenise differently from the whole, so each is counted again (as in ``_cut``)."""
        offsets = self._encoder.encode(text, add_special_tokens=False).offsets
        if len(offsets) <= tokens:
            return text
        for take in range(tokens, 0, -1):
            cut = text[: offsets[take - 1][1]].rstrip()
            if self.count_tokens(cut) <= tokens:
                return cut
        return ""

    def _spans(self, text: str, limit: int) -> list[Counted]:
        """Spans of ``text`` that fit ``limit`` and cover all its non-whitespace, in order."""
        if not text.strip():
            return []
        if self.strategy == "token":
            pieces = self._token_windows(text, limit)
        else:
            self._warm_counts(text)
            pieces = self._splitter(limit).split_text(text)
        spans = _fill_gaps(text, _locate(text, pieces))
        fitted: list[Counted] = []
        for (a, b), count in zip(spans, self._count_many([text[a:b] for a, b in spans]), strict=True):
            fitted.extend([(a, b, count)] if count <= limit else self._cut(text, a, b, limit))
        return self._join_small(text, _drop_contained(fitted), limit)

    def _splitter(self, limit: int) -> RecursiveCharacterTextSplitter:
        """Langchain's splitter for chunks of ``limit`` tokens (one per limit, made on first need)."""
        splitter = self._splitters.get(limit)
        if splitter is None:
            separators, is_regex, keep = self._separators
            splitter = self._splitters[limit] = RecursiveCharacterTextSplitter(
                separators=separators,
                is_separator_regex=is_regex,
                keep_separator=keep,
                chunk_size=limit,
                chunk_overlap=self.chunk_overlap,
                length_function=self._cached_count,
            )
        return splitter

    def _join_small(self, text: str, spans: list[Counted], limit: int) -> list[Counted]:
        """Join each span to the one before it when the two fit in one chunk.

        Langchain starts a fresh chunk after every paragraph it had to cut, which leaves scraps
        such as a lone ``</div>`` or closing fence. Joining only backwards, as langchain's own
        merging does, means an edit can change the chunk just before it but none further up.
        """
        out: list[Counted] = []
        for start, end, count in spans:
            if out and out[-1][2] + count <= limit:
                joined = self.count_tokens(text[out[-1][0] : end])
                if joined <= limit:
                    out[-1] = (out[-1][0], end, joined)
                    continue
            out.append((start, end, count))
        return out

    def _warm_counts(self, text: str) -> None:
        """Count, in one parallel batch, the pieces langchain's first cut will measure one by one.

        The first cut is at every match of the first separator found in the text, the separator
        kept with the piece before or after it. Only a speed-up: a piece guessed wrongly is simply
        counted again when langchain asks.
        """
        for separator in self._first_cuts:
            cuts = [m.end() if self._keep_end else m.start() for m in separator.finditer(text)]
            if cuts:
                bounds = [0, *cuts, len(text)]
                pieces = [text[a:b] for a, b in itertools.pairwise(bounds) if a < b]
                self._counts.update(zip(pieces, self._count_many(pieces), strict=True))
                return

    def _count_many(self, texts: list[str]) -> list[int]:
        return [len(encoding) for encoding in self._encode_many(texts, add_special_tokens=False)]

    def _token_windows(self, text: str, limit: int) -> list[str]:
        """Langchain's token windows, with token positions as ids so each window decodes to the
        exact original text (decoding real ids would normalise it: lower case, no accents)."""
        offsets = self._encoder.encode(text, add_special_tokens=False).offsets
        windows = Tokenizer(
            chunk_overlap=self.chunk_overlap,
            tokens_per_chunk=limit,
            encode=lambda _: list(range(len(offsets))),
            decode=lambda ids: text[offsets[ids[0]][0] : offsets[ids[-1]][1]],
        )
        return split_text_on_tokens(text=text, tokenizer=windows)

    def _cut(self, text: str, start: int, end: int, limit: int) -> list[Counted]:
        """Cut an over-limit span into consecutive spans that fit, at token boundaries.

        A substring can tokenise differently from the whole (a word cut in two, an over-long word
        that was one [UNK]), so each cut is re-counted and moved back until it fits. The one thing
        that cannot fit is a single character worth more tokens than the limit (a Hangul syllable
        is 3 MiniLM tokens), possible only with a tiny chunk size: it is kept, with a warning.
        """
        out: list[Counted] = []
        start, end = _strip(text, start, end)
        while start < end:
            offsets = self._encoder.encode(text[start:end], add_special_tokens=False).offsets
            if len(offsets) <= limit:
                out.append((start, end, len(offsets)))
                break
            take = limit
            while True:
                cut = _strip(text, start, start + max(offsets[take - 1][1], 1))[1]
                count = self.count_tokens(text[start:cut])
                if count <= limit or take == 1:  # one token's text is as small as a cut can be
                    break
                take = max(1, take - (count - limit))
            if count > limit:
                log.warning("%r is %d tokens, over the chunk size %d", text[start:cut], count, limit)
            out.append((start, cut, count))
            start, end = _strip(text, cut, end)
        return out

    def _cached_count(self, text: str) -> int:
        count = self._counts.get(text)
        if count is None:
            count = self._counts[text] = self.count_tokens(text)
        return count


def _strip(text: str, start: int, end: int) -> Span:
    """The span without its leading and trailing whitespace (as ``str.strip`` sees it)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _locate(text: str, pieces: list[str]) -> list[Span]:
    """Where each piece lies in ``text``, moving forward.

    The next piece starts after the previous one's start and no later than the first
    non-whitespace character after its end (else text would be skipped), and it must reach past
    the previous end; a piece with no such place only repeats text already covered (or the
    splitter went astray) and is dropped, since ``_fill_gaps`` restores coverage either way.
    """
    spans: list[Span] = []
    prev_start, prev_end = -1, 0
    for piece in pieces:
        if not piece:
            continue
        latest = _strip(text, prev_end, len(text))[0]
        stop = latest + len(piece)
        pos = text.find(piece, prev_start + 1, stop)
        while pos >= 0 and pos + len(piece) <= prev_end:
            pos = text.find(piece, pos + 1, stop)
        if pos < 0:
            continue
        start, end = _strip(text, pos, pos + len(piece))
        if start < end:
            spans.append((start, end))
            prev_start, prev_end = start, max(prev_end, end)
    return spans


def _fill_gaps(text: str, spans: list[Span]) -> list[Span]:
    """Add any non-whitespace text between (or around) the spans as spans of its own."""
    out: list[Span] = []
    covered = 0
    for start, end in [*spans, (len(text), len(text))]:
        if start > covered:
            gap = _strip(text, covered, start)
            if gap[0] < gap[1]:
                out.append(gap)
        if end > start:
            out.append((start, end))
        covered = max(covered, end)
    return out


def _drop_contained(spans: list[Counted]) -> list[Counted]:
    """Spans sorted by start, without any that lies inside another (it adds nothing)."""
    out: list[Counted] = []
    for span in sorted(spans, key=lambda s: (s[0], -s[1])):
        if not out or span[1] > out[-1][1]:
            out.append(span)
    return out


def _parts(title: str, path: HeadingPath) -> list[str]:
    """The title, then the headings, each once (a first heading that repeats the title adds nothing)."""
    return list(dict.fromkeys(part for part in (title, *path) if part))


def _unshown(title: str, path: HeadingPath, piece: str) -> list[str]:
    """The parts of a chunk's context (title, headings) its own first lines do not already show."""
    shown = _opening_headings(piece)
    opening = piece.lstrip()
    return [part for part in _parts(title, path)
            if part not in shown and not (part == title and opening.startswith(title))]


def _opening_headings(text: str) -> set[str]:
    """The headings of the ATX heading lines a chunk opens with."""
    shown = set()
    for line in text.lstrip().split("\n"):
        if not line.strip():
            continue
        header = _ATX_HEADER.match(line.rstrip())
        if not header:
            break
        shown.add(header.group(2).strip())
    return shown


def _markdown_sections(text: str) -> list[tuple[int, int, HeadingPath]]:
    """(start, end, heading path) for each section of a markdown text.

    A section runs from an ATX header line (``#`` to ``######``, not inside a fenced code block
    or front matter) to the next one; a header with nothing under it but a sub-header stays with
    that sub-header, so a chunk is never just a title.
    """
    sections: list[tuple[int, int, HeadingPath]] = []
    path: list[tuple[int, str]] = []
    front = FRONT_MATTER.match(text)
    offset = front.end() if front else 0
    section_start, section_body = 0, 0
    headers: HeadingPath = ()
    fence = ""
    for line in text[offset:].split("\n"):
        line_start, offset = offset, offset + len(line) + 1
        stripped = line.rstrip()
        if fence:  # only a run of the same fence character, at least as long, closes it
            closer = stripped.lstrip(" ")
            if closer.startswith(fence) and not closer.strip(fence[0]):
                fence = ""
            continue
        opener = _FENCE.match(stripped)
        if opener:
            fence = opener.group(1)
            continue
        header = _ATX_HEADER.match(stripped)
        if not header or not header.group(2).strip():
            continue
        if text[section_body:line_start].strip():
            sections.append((section_start, line_start, headers))
            section_start = line_start
        level = len(header.group(1))
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, header.group(2).strip()))
        headers = tuple(title for _, title in path)
        section_body = min(offset, len(text))
    sections.append((section_start, len(text), headers))
    return sections


# --- tables -----------------------------------------------------------------------------------
# Loaders give tables as Markdown, one row a line, so the splitter cuts a long table between rows.
# A chunk's text must stay a slice of the document, so the rows cut off from their header cannot
# carry a copy of it; the chunk names it in metadata instead (``table_header``), for whatever shows
# or filters the chunk.

_TABLE_ROW = re.compile(r"[ \t]*\|.*\|[ \t]*$")
_TABLE_RULE = re.compile(r"[ \t]*\|(?:[ \t]*:?-{3,}:?[ \t]*\|)+[ \t]*$")


def markdown_tables(text: str) -> list[tuple[int, int, int]]:
    """(start, end of its header and rule, end) of each Markdown table in ``text``."""
    tables = []
    lines = text.split("\n")
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    number = 0
    while number < len(lines) - 1:
        if _TABLE_ROW.match(lines[number]) and _TABLE_RULE.match(lines[number + 1]):
            last = number + 1
            while last + 1 < len(lines) and _TABLE_ROW.match(lines[last + 1]):
                last += 1
            tables.append((offsets[number], offsets[number + 2] - 1, offsets[last + 1] - 1))
            number = last + 1
        else:
            number += 1
    return tables


def header_of_rows(text: str, tables: list[tuple[int, int, int]], start: int) -> str | None:
    """The header (and rule) of the table whose rows a chunk starting at ``start`` begins inside."""
    for table_start, header_end, table_end in tables:
        if header_end < start < table_end:
            return text[table_start:header_end]
    return None
