"""Answer a file of questions over a folder of documents; one JSON line per answer.

    python examples/answer_questions.py examples/sample_docs examples/questions.txt answers.jsonl \
        [--config configs/default.yaml] [--set generation.max_new_tokens=64 ...]

Questions are one per line, or JSONL objects with "question" and an optional "id".
"""
import argparse
import json
import sys

from rag import Pipeline, RagError
from rag.runs import read_questions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("documents", nargs="+", help="files or folders to ingest")
    parser.add_argument("questions", help="questions file")
    parser.add_argument("output", help="answers JSONL to write")
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    try:
        pipeline = Pipeline.from_yaml(args.config, sets=args.sets)
        questions = read_questions(args.questions)
        print(pipeline.ingest(args.documents).summary(), file=sys.stderr)
        with open(args.output, "w", encoding="utf-8") as out:
            for item in questions:
                answer = pipeline.ask(item["question"])
                sources = [answer.hits[n - 1].chunk.metadata.get("source") for n in answer.citations]
                out.write(json.dumps({**item, "answer": answer.text, "sources": sources}) + "\n")
                print(f"{item['id']}: {answer.text.strip()[:100]}", file=sys.stderr)
    except RagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
