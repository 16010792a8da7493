"""`rag run CONFIG.yaml`: ingest ``run.inputs``, answer every question of ``run.questions``, and
leave the answers beside a copy of the effective config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rag.config import dump_settings
from rag.errors import ConfigError
from rag.files import write_atomic
from rag.pipeline import Pipeline
from rag.text import log


def read_questions(path: str | Path) -> list[dict[str, str]]:
    """One question per line, or JSONL objects with ``question`` and an optional ``id``."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"run.questions: cannot read {path} ({exc.strerror or exc})") from None
    questions: list[dict[str, str]] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not str(record.get("question", "")).strip():
                raise ConfigError(f"{path}:{number}: a JSON line needs a non-empty \"question\"")
            questions.append({"id": str(record.get("id", len(questions) + 1)), "question": str(record["question"])})
        else:
            questions.append({"id": str(len(questions) + 1), "question": line})
    if not questions:
        raise ConfigError(f"run.questions: {path} holds no questions")
    return questions


def run_job(pipeline: Pipeline) -> dict[str, Any]:
    """Ingest ``run.inputs``, answer every question in ``run.questions``, write the answers as JSONL
    next to a copy of the effective config. Files appear only once complete."""
    settings = pipeline.settings.run
    if not settings.questions:
        raise ConfigError("run.questions: not set; name a questions file (one per line, or JSONL)")
    questions = read_questions(settings.questions)
    report = pipeline.ingest(settings.inputs) if settings.inputs else None
    if report:
        log(report.summary())
    out = Path(settings.output)
    rows = []
    for item in questions:
        answer = pipeline.ask(item["question"])
        rows.append({"id": item["id"], "question": item["question"], **answer.to_dict()})
        log(f"answered {len(rows)}/{len(questions)}")
    answers_path, config_path = out / "answers.jsonl", out / "config.yaml"
    write_atomic(config_path, dump_settings(pipeline.settings))
    write_atomic(answers_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"questions": len(rows), "answers": str(answers_path), "config": str(config_path),
            "ingest": report.as_dict() if report else None}
