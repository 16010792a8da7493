"""Hits + question -> prompt: a sandboxed Jinja2 template, packed to a token budget, numbered sources.

Templates are files (``prompts/NAME.j2`` for the builtin names, or any path) rendered in Jinja2's
``SandboxedEnvironment`` with ``StrictUndefined``: a template cannot reach Python internals, and a
misspelt variable is an error instead of an empty string. The question and the document texts are
passed as *data* (variables), never compiled as templates, so ``{{ ... }}`` inside a document comes
out verbatim.

The rendered prompt is the user message; the generator adds the system prompt and chat format.

Variables a template sees:

- ``question``: the question, as given.
- ``sources``: one dict per kept hit, best first: ``number`` (1-based, the ``[n]`` a citation uses),
  ``text``, ``source`` (file path, ``""`` when unknown), ``title`` (``""`` when unknown), ``page``
  (``None`` when not paged), ``score``, ``id`` (chunk id), ``metadata`` (the chunk's metadata).
- ``config``: the ``variables`` dict given to ``PromptBuilder``.
- ``history``: the conversation before the question (a chat client's earlier messages), a list of
  ``{"role", "content"}`` dicts, oldest first; empty for a single question. The builtin templates
  answer the question alone, so that sources and not an earlier answer decide it; a template of
  one's own may show it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from rag.errors import GenerationError, PromptError
from rag.types import Hit


def _templates_dir() -> Path:
    """prompts/ beside the package in a source checkout or editable install; a wheel installs the
    same files under <prefix>/share/rag/prompts (pyproject's data-files)."""
    beside = Path(__file__).resolve().parents[1] / "prompts"
    installed = Path(sys.prefix) / "share" / "rag" / "prompts"
    return beside if beside.is_dir() or not installed.is_dir() else installed


BUILTIN_TEMPLATES_DIR = _templates_dir()
DEFAULT_TEMPLATE = "qa_cited"


def builtin_templates() -> list[str]:
    """Names of the templates shipped in ``prompts/`` (usable as ``PromptBuilder(name)``)."""
    if not BUILTIN_TEMPLATES_DIR.is_dir():
        return []
    return sorted(p.stem for p in BUILTIN_TEMPLATES_DIR.glob("*.j2"))


def resolve_template(template: str | Path) -> Path:
    """The template file for a builtin name or a path; PromptError when there is none."""
    path = Path(template).expanduser()
    if path.is_file():
        return path.resolve()
    builtin = BUILTIN_TEMPLATES_DIR / f"{template}.j2"
    if isinstance(template, str) and re.fullmatch(r"[\w.-]+", template) and builtin.is_file():
        return builtin.resolve()
    names = ", ".join(builtin_templates()) or "none found"
    if path.suffix or len(path.parts) > 1:
        raise PromptError(
            f"prompt template file {template} does not exist; give an existing path or a builtin name ({names})"
        )
    raise PromptError(f"unknown prompt template {template!r}: give a builtin name ({names}) or the path of a .j2 file")


def _source_dict(number: int, hit: Hit, escape: Callable[[str], str]) -> dict[str, Any]:
    meta = {k: escape(v) if isinstance(v, str) else v for k, v in (hit.chunk.metadata or {}).items()}
    return {
        "number": number,
        "text": escape(hit.chunk.text),
        "source": str(meta.get("source") or ""),
        "title": str(meta.get("title") or ""),
        "page": meta.get("page"),
        "score": hit.score,
        "id": hit.chunk.id,
        "metadata": meta,
    }


def _unchanged(text: str) -> str:
    return text


class PromptBuilder:
    """Renders a question and its retrieved hits through one template, within a token budget."""

    def __init__(self, template: str | Path = DEFAULT_TEMPLATE, *, variables: Mapping[str, Any] | None = None):
        self.path = resolve_template(template)
        self.variables = dict(variables or {})
        # Includes/extends resolve next to the template first, then among the builtins, so a user
        # template can {% extends "qa_cited.j2" %}. The loader refuses paths outside these folders.
        search = [str(self.path.parent)]
        if BUILTIN_TEMPLATES_DIR.is_dir() and BUILTIN_TEMPLATES_DIR.resolve() != self.path.parent:
            search.append(str(BUILTIN_TEMPLATES_DIR.resolve()))
        self._search = [Path(s) for s in search]
        self.env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(search, encoding="utf-8"),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        try:
            self.template = self.env.get_template(self.path.name)
        except jinja2.TemplateSyntaxError as exc:
            where = exc.filename or str(self.path)
            raise PromptError(f"prompt template {where}, line {exc.lineno}: {exc.message}") from exc
        except jinja2.TemplateNotFound as exc:
            raise PromptError(f"prompt template {self.path}: cannot find {exc.name}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise PromptError(f"prompt template {self.path} cannot be read: {exc}") from exc

    def render(self, question: str, hits: list[Hit], escape: Callable[[str], str] = _unchanged,
               history: Sequence[Mapping[str, str]] = ()) -> str:
        """The prompt for ``question`` with every hit as a numbered source, in the order given.
        ``escape`` is applied to the question, to the text of every source and to the history (the
        generator's ``neutralize``, so that no document or message text can act as a special token)."""
        sources = [_source_dict(i, hit, escape) for i, hit in enumerate(hits, start=1)]
        return self._render(escape(question), sources, _history(history, escape))

    def _render(self, question: str, sources: list[dict[str, Any]], history: Sequence[dict[str, str]] = ()) -> str:
        try:
            return self.template.render(question=question, sources=sources, config=self.variables,
                                        history=list(history))
        except SecurityError as exc:
            raise PromptError(
                f"prompt template {self._where(exc)} tried something the sandbox forbids ({exc}); "
                "templates may only use the variables question, sources, history and config"
            ) from exc
        except jinja2.UndefinedError as exc:
            raise PromptError(
                f"prompt template {self._where(exc)}: {exc}; templates see question, sources, history and config "
                "(set extra values under the prompt's variables)"
            ) from exc
        except jinja2.TemplateSyntaxError as exc:  # in an included template, compiled on first use
            raise PromptError(f"prompt template {exc.filename or self.path}, line {exc.lineno}: {exc.message}") from exc
        except jinja2.TemplateError as exc:
            raise PromptError(f"prompt template {self._where(exc)}: {exc}") from exc
        except Exception as exc:  # e.g. a filter applied to the wrong type
            raise PromptError(f"prompt template {self._where(exc)} failed: {type(exc).__name__}: {exc}") from exc

    def _where(self, exc: BaseException) -> str:
        """``file, line N`` from the template frames Jinja puts in a render traceback."""
        found: tuple[str, int] | None = None
        tb = exc.__traceback__
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            if filename and any(_is_under(filename, folder) for folder in self._search):
                found = (filename, tb.tb_lineno)
            tb = tb.tb_next
        if found is None:
            return str(self.path)
        return f"{found[0]}, line {found[1]}"

    def pack(
        self, question: str, hits: list[Hit], measure: Callable[[str], int], budget: int,
        escape: Callable[[str], str] = _unchanged, finish: Callable[[str], str] = _unchanged,
        history: Sequence[Mapping[str, str]] = (),
    ) -> tuple[str, list[Hit], int]:
        """The prompt with as many of the best hits as fit in ``budget`` tokens.

        Returns ``(prompt, kept hits, number dropped)``. Hits arrive best first; only whole hits are
        dropped, from the bottom, and no text is ever cut. ``finish`` turns the rendered template
        into the text the model sees (the generator's chat format) and ``measure`` counts its tokens
        exactly; the prompt returned is finished. The largest fitting prefix is found by binary
        search (``measure`` grows with the number of hits); every prompt returned has been measured
        to fit.
        """
        hits = list(hits)
        # Escaped once: the binary search below renders prefixes of the same sources several times.
        question = escape(question)
        sources = [_source_dict(i, hit, escape) for i, hit in enumerate(hits, start=1)]
        earlier = _history(history, escape)

        def fits(k: int) -> tuple[bool, str, int]:
            prompt = finish(self._render(question, sources[:k], earlier))
            size = measure(prompt)
            return size <= budget, prompt, size

        ok, prompt, _size = fits(len(hits))
        if ok:
            return prompt, hits, 0
        ok, best, empty_size = fits(0)
        if not ok:
            raise GenerationError(
                f"the question and prompt template alone take {empty_size} tokens, more than the {budget} "
                "the context window leaves for the prompt; lower generation.max_new_tokens, raise "
                "generation.context_window (if the model allows it), or use a shorter question or template"
            )
        lo, hi = 0, len(hits)  # lo fits, hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            ok, prompt, _ = fits(mid)
            if ok:
                lo, best = mid, prompt
            else:
                hi = mid
        return best, hits[:lo], len(hits) - lo


def _history(messages: Sequence[Mapping[str, str]], escape: Callable[[str], str]) -> list[dict[str, str]]:
    return [{"role": str(m.get("role", "")), "content": escape(str(m.get("content", "")))} for m in messages]


def _is_under(filename: str, folder: Path) -> bool:
    try:
        Path(filename).resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return False
    return True


# A citation is a bracket holding numbers, separated by commas, semicolons or "and", where a number
# may be a range ("1-3", or with an en dash) and may be preceded by "source"/"sources": [1], [1, 2], [1-3],
# [Source 2]. Adjacent brackets ([1][3]) are simply two matches.
_NUMBER = r"(?:sources?\s*)?\d+(?:\s*[-\u2013]\s*\d+)?"
_CITATION = re.compile(rf"\[\s*({_NUMBER}(?:\s*(?:,|;|\band\b)\s*{_NUMBER})*)\s*\]", re.IGNORECASE)
_MAX_RANGE = 100  # a wider "range" is more likely a typo or a year span than a citation run


def parse_citations(text: str, n_sources: int) -> tuple[list[int], list[int]]:
    """``(cited, unknown)``: source numbers cited in ``text``, each once, in order of first appearance.

    ``cited`` holds the numbers in 1..n_sources (so ``cited[i] - 1`` indexes the kept hits), ``unknown``
    the numbers outside that range (a model citing a source it was never shown). Ranges ``[a-b]`` with
    ``a <= b`` expand to every number in between (up to 100 of them); otherwise both ends count.
    """
    cited: list[int] = []
    unknown: list[int] = []
    for match in _CITATION.finditer(text):
        for number in _numbers(match.group(1)):
            target = cited if 1 <= number <= n_sources else unknown
            if number not in target:
                target.append(number)
    return cited, unknown


def _numbers(group: str) -> list[int]:
    numbers: list[int] = []
    for part in re.split(r"\s*(?:,|;|\band\b)\s*", group, flags=re.IGNORECASE):
        ends = [int(n) for n in re.findall(r"\d+", part)]
        if len(ends) == 2 and ends[0] <= ends[1] and ends[1] - ends[0] < _MAX_RANGE:
            numbers.extend(range(ends[0], ends[1] + 1))
        else:
            numbers.extend(ends)
    return numbers


_WORD = re.compile(r"\w+")
# Words that say nothing about where an answer came from.
_FUNCTION_WORDS = frozenset(
    [
        "a", "an", "the", "of", "in", "on", "at", "to", "for", "from", "by", "with", "and", "or", "is", "are",
        "was", "were", "be", "been", "it", "its", "this", "that", "these", "those", "as", "than", "then", "there",
        "their", "they", "he", "she", "his", "her", "him", "we", "you", "i", "not", "no", "yes"
    ]
)


def attribute(answer: str, texts: list[str], *, threshold: float = 0.5) -> list[int]:
    """The source (1-based) whose text holds the largest share of the answer's words, when that share
    is at least ``threshold``; ``[]`` otherwise. For answers that cite nothing themselves: a small
    model copies its answer from a source far more reliably than it writes ``[n]``."""
    words = {w for w in _WORD.findall(answer.lower()) if w not in _FUNCTION_WORDS}
    if not words or not texts:
        return []
    shares = [len(words & set(_WORD.findall(text.lower()))) / len(words) for text in texts]
    best = max(range(len(texts)), key=lambda i: shares[i])
    return [best + 1] if shares[best] >= threshold else []


def citations(answer: str, sources: list[str]) -> tuple[list[int], list[int], str]:
    """``(cited, unknown, cited_by)`` for an answer over the numbered ``sources``: the ``[n]`` it
    wrote (``cited_by == "answer"``), else the source holding most of its words (``"overlap"``)."""
    cited, unknown = parse_citations(answer, len(sources))
    if cited or unknown:
        return cited, unknown, "answer"
    cited = attribute(answer, sources)
    return cited, unknown, "overlap" if cited else "answer"
