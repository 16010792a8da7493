"""Readers for the evaluation data sets: BEIR (corpus, queries, qrels) and SQuAD v1.1.

Every reader raises :class:`~rag.errors.ConfigError` naming the file (and the line, for line-based
files) when the file is missing or malformed.
- :func:`read_beir_corpus`: BEIR ``corpus.jsonl``, one JSON object a line with ``_id``, ``text`` and an
  optional ``title``; yields ``(_id, title, text)`` while reading (streaming). Blank lines are skipped;
  a repeated ``_id`` is an error.
- :func:`read_beir_queries`: BEIR ``queries.jsonl`` -> ``{_id: text}``.
- :func:`read_qrels`: BEIR qrels TSV ``query-id corpus-id score`` (tab- or whitespace-separated), with
  or without the header line; trailing whitespace and CRLF line ends are fine. The 4-column TREC form
  ``query-id iteration corpus-id score`` is read too. Grades must be integers.
- :func:`read_squad`: SQuAD v1.1 JSON -> ``([(title, article_text)], [SquadQuestion])``: one entry per
  article, whose text is the title (underscores shown as spaces) followed by its paragraphs, joined
  by blank lines; and every question with its gold answer texts (in file order, duplicates kept),
  its paragraph and the article title as given in the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rag.errors import ConfigError


def _open_text(path: Path, what: str):
    try:
        return path.open("r", encoding="utf-8-sig", newline=None)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found; check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a {what} file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc})") from None


def _read_jsonl(path: Path, what: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines file."""
    with _open_text(path, what) as fh:
        lineno = 0
        while True:
            try:
                line = fh.readline()
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{path}:{lineno + 1}: not UTF-8 text ({exc.reason})") from None
            if not line:
                return
            lineno += 1
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"{path}:{lineno}: invalid JSON ({exc.msg}); each line must be one JSON object") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _field(obj: dict, key: str, path: Path, lineno: int, *, required: bool = True) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise ConfigError(f'{path}:{lineno}: missing "{key}"')
        return ""
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError(f'{path}:{lineno}: "{key}" must be a string, got {type(value).__name__}')
    return str(value)


def read_beir_corpus(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """Yield ``(_id, title, text)`` for each line of a BEIR corpus.jsonl, streaming."""
    path = Path(path)
    _open_text(path, "corpus").close()  # fail now on a bad path, not at the first next()
    return _iter_corpus(path)


def _iter_corpus(path: Path) -> Iterator[tuple[str, str, str]]:
    seen: set[str] = set()
    for lineno, obj in _read_jsonl(path, "corpus"):
        doc_id = _field(obj, "_id", path, lineno)
        if doc_id in seen:
            raise ConfigError(f"{path}:{lineno}: document id {doc_id!r} appears twice")
        seen.add(doc_id)
        yield doc_id, _field(obj, "title", path, lineno, required=False), _field(obj, "text", path, lineno)


def read_beir_queries(path: str | Path) -> dict[str, str]:
    """``{_id: text}`` from a BEIR queries.jsonl."""
    path = Path(path)
    queries: dict[str, str] = {}
    for lineno, obj in _read_jsonl(path, "queries"):
        qid = _field(obj, "_id", path, lineno)
        if qid in queries:
            raise ConfigError(f"{path}:{lineno}: query id {qid!r} appears twice")
        queries[qid] = _field(obj, "text", path, lineno)
    return queries


def _parse_grade(raw: str) -> int | None:
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        value = float(raw)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """``{query id: {doc id: grade}}`` from a qrels TSV (``query-id corpus-id score``), header optional."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    first = True
    with _open_text(path, "qrels") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line:
                continue
            parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
            is_first, first = first, False
            if len(parts) == 4:  # TREC form: query-id iteration doc-id grade
                parts = [parts[0], parts[2], parts[3]]
            if len(parts) != 3 or not parts[0] or not parts[1]:
                raise ConfigError(
                    f"{path}:{lineno}: expected 3 columns 'query-id corpus-id score', got {len(parts)}"
                )
            grade = _parse_grade(parts[2])
            if grade is None:
                if is_first:  # the header line ("query-id corpus-id score" or similar)
                    continue
                raise ConfigError(f"{path}:{lineno}: relevance score {parts[2]!r} is not an integer")
            qid, doc_id = parts[0], parts[1]
            judged = qrels.setdefault(qid, {})
            if doc_id in judged and judged[doc_id] != grade:
                raise ConfigError(
                    f"{path}:{lineno}: ({qid}, {doc_id}) judged twice with different scores "
                    f"({judged[doc_id]} and {grade})"
                )
            judged[doc_id] = grade
    return qrels


@dataclass
class SquadQuestion:
    """One SQuAD question with its gold answers, its paragraph and its article title."""

    id: str
    question: str
    answers: list[str]
    context: str
    title: str


def read_squad(path: str | Path) -> tuple[list[tuple[str, str]], list[SquadQuestion]]:
    """``([(title, article_text)], questions)`` from a SQuAD v1.1 JSON file."""
    path = Path(path)
    with _open_text(path, "SQuAD file") as fh:
        try:
            doc = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None

    def bad(where: str, what: str) -> ConfigError:
        return ConfigError(f"{path}: {where}: {what}; expected the SQuAD v1.1 layout")

    def text_of(obj: object, key: str, where: str) -> str:
        if not isinstance(obj, dict) or not isinstance(obj.get(key), str):
            raise bad(where, f'missing string "{key}"')
        return obj[key]

    def list_of(obj: object, key: str, where: str) -> list:
        if not isinstance(obj, dict) or not isinstance(obj.get(key), list):
            raise bad(where, f'missing list "{key}"')
        return obj[key]

    articles: list[tuple[str, str]] = []
    questions: list[SquadQuestion] = []
    for a, article in enumerate(list_of(doc, "data", "top level")):
        where_a = f"data[{a}]"
        title = text_of(article, "title", where_a)
        paragraphs: list[str] = []
        for p, paragraph in enumerate(list_of(article, "paragraphs", where_a)):
            where_p = f"{where_a}.paragraphs[{p}]"
            context = text_of(paragraph, "context", where_p)
            paragraphs.append(context)
            for q, qa in enumerate(list_of(paragraph, "qas", where_p)):
                where_q = f"{where_p}.qas[{q}]"
                qid = qa.get("id") if isinstance(qa, dict) else None
                if isinstance(qid, int) and not isinstance(qid, bool):
                    qid = str(qid)
                if not isinstance(qid, str):
                    raise bad(where_q, 'missing string "id"')
                answers = [
                    text_of(ans, "text", f"{where_q}.answers[{i}]")
                    for i, ans in enumerate(list_of(qa, "answers", where_q))
                ]
                questions.append(
                    SquadQuestion(
                        id=qid,
                        question=text_of(qa, "question", where_q),
                        answers=answers,
                        context=context,
                        title=title,
                    )
                )
        articles.append((title, "\n\n".join([title.replace("_", " "), *paragraphs])))
    return articles, questions
