"""How often ``rag ask`` answers short factual questions right over documents it has never seen.

Run from the repository root (about a minute or two on a CPU with the default settings):

    python examples/benchmarks/answers.py

Other settings, another question set, a kept store, a result file:

    python examples/benchmarks/answers.py --set generation.max_new_tokens=64 --set retrieval.k=3 \
        --docs examples/qa-dev/docs --questions examples/qa-dev/questions.jsonl --store /tmp/qa-store \
        --out result.json

The documents in ``--docs`` are ingested with ``rag.pipeline.Pipeline`` into ``--store`` (a temporary
folder, removed afterwards, unless given), then every question of ``--questions`` (JSONL: ``id``,
``question``, ``answers`` -- accepted short answers -- and ``source`` -- the file that answers it) is
asked with ``Pipeline.ask``. An answer is right when one accepted answer, normalized the SQuAD way
(``rag.evaluation.normalize_answer``), occurs as whole tokens in the normalized answer text
(``rag.evaluation.answer_in_text``). It cited the right source when one of its citations (1-based into
``answer.hits``) is a hit whose ``chunk.metadata["source"]`` ends with the question's ``source``.

One line per question goes to stderr; stdout holds one JSON document:
``{"questions", "right", "cited_right_source", "seconds", "settings"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from rag.errors import RagError
from rag.evaluation import answer_in_text
from rag.pipeline import Pipeline

HERE = Path(__file__).resolve().parent
DEFAULT_DOCS = HERE.parent / "qa-dev" / "docs"
DEFAULT_QUESTIONS = HERE.parent / "qa-dev" / "questions.jsonl"


def read_questions(path: Path) -> list[dict]:
    questions = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            item = json.loads(line)
            for key in ("id", "question", "answers", "source"):
                if key not in item:
                    raise SystemExit(f"{path}:{lineno}: missing {key!r}")
            questions.append(item)
    return questions


def from_source(source: object, wanted: str) -> bool:
    """True when the path ``source`` ends with the file name (or relative path) ``wanted``."""
    text = str(source or "").replace("\\", "/")
    wanted = wanted.replace("\\", "/")
    return text == wanted or text.endswith("/" + wanted)


def cites_source(answer, wanted: str) -> bool:
    for number in answer.citations:
        if not 1 <= number <= len(answer.hits):
            continue  # a citation of no retrieved chunk
        if from_source(answer.hits[number - 1].chunk.metadata.get("source"), wanted):
            return True
    return False


def shorten(text: str, limit: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="folder of documents to ingest")
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS, help="questions JSONL")
    parser.add_argument("--store", type=Path, default=None, help="store folder (default: a temporary one)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="setting override, as `rag --set` (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="also write the result JSON here")
    args = parser.parse_args()

    questions = read_questions(args.questions)
    temporary = None
    store = args.store
    if store is None:
        temporary = tempfile.mkdtemp(prefix="rag-qa-dev-")
        store = Path(temporary) / "store"
    start = time.perf_counter()
    right = cited_right = 0
    try:
        pipeline = Pipeline.from_yaml(None, sets=[*args.sets, f"store.path={store}"])
        print(pipeline.ingest([args.docs]).summary(), file=sys.stderr)
        for item in questions:
            answer = pipeline.ask(item["question"])
            ok = answer_in_text(item["answers"], answer.text)
            cited = cites_source(answer, item["source"])
            right += ok
            cited_right += cited
            print(f"{item['id']}\t{'right' if ok else 'wrong'}\tcited right source: {'yes' if cited else 'no'}"
                  f"\t{shorten(answer.text)}", file=sys.stderr)
    except RagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    result = {
        "questions": len(questions),
        "right": right,
        "cited_right_source": cited_right,
        "seconds": round(time.perf_counter() - start, 1),
        "settings": list(args.sets),
    }
    text = json.dumps(result)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
