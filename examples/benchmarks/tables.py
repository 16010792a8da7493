"""How much of each table's cell text a loader keeps together, row by row, against the reference
Markdown renderings in ``../shared/data/formats/groundtruth/``; for two checkouts (before and after a
change to the loaders).

    python examples/benchmarks/tables.py                       # this checkout
    python examples/benchmarks/tables.py --before ../main      # and another one, side by side

For every row of every table in a reference file (Markdown rows ``| a | b |``, the ``| - |`` rule left
out), the row's words (lower-cased ``\\w+`` of its cells) are looked for in each single line of the
loaded text; the row scores the share of its words found in its best line, so a row whose cells come
out scattered over several lines scores low even when every word is somewhere. A file's score is the
mean over its rows. The loaded text is ``load_file`` with the default settings, run in a child process
with the checkout first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "formats"


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def reference_rows(markdown: str) -> list[set[str]]:
    rows = []
    for raw in markdown.splitlines():
        line = raw.strip()
        if line.startswith("|") and not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line):
            found = words(" ".join(cell for cell in line.strip("|").split("|")))
            if found:
                rows.append(found)
    return rows


def source_of(reference: Path) -> Path | None:
    name = reference.name.removesuffix(".md")
    for candidate in [*DATA.glob(f"*/{name}"), *DATA.glob(f"pdf/{name}.pdf")]:
        return candidate
    return None


def loaded_text(checkout: Path, path: Path) -> str:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from rag.loaders import load_file; "
            "print('\\n'.join(d.text for d in load_file(sys.argv[2])))")
    done = subprocess.run([sys.executable, "-c", code, str(checkout), str(path)], capture_output=True, text=True,
                          check=True)
    return done.stdout


def score(rows: list[set[str]], text: str) -> float:
    lines = [words(line) for line in text.splitlines() if line.strip()]
    return sum(max((len(row & line) / len(row) for line in lines), default=0.0) for row in rows) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="another checkout to compare with (e.g. main's)")
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()
    checkouts = {"before": args.before, "after": ROOT} if args.before else {"after": ROOT}
    results = []
    print(f"{'file':32} {'rows':>5} " + " ".join(f"{name:>7}" for name in checkouts))
    for reference in sorted((DATA / "groundtruth").glob("*.md")):
        rows = reference_rows(reference.read_text(encoding="utf-8"))
        source = source_of(reference)
        if not rows or source is None:
            continue
        row = {"file": source.name, "rows": len(rows)}
        row.update({name: round(score(rows, loaded_text(path, source)), 3) for name, path in checkouts.items()})
        results.append(row)
        print(f"{source.name:32} {len(rows):>5} " + " ".join(f"{row[name]:>7.3f}" for name in checkouts))
    for name in checkouts:
        mean = sum(r[name] for r in results) / len(results)
        print(f"mean over files, {name}: {mean:.3f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
