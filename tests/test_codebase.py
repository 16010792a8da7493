"""The rules the code is kept to (CONTRIBUTING.md): stages know nothing of each other, and no room
grows past what one reader can hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rag"
# The pipeline's stages, in the order data flows; only rag.pipeline and rag.stages know them all.
STAGES = ("loaders", "chunking", "embedding", "indexing", "stores", "engines", "retrieval", "evidence",
          "prompting", "generation")
LONGEST_FUNCTION = 80
LONGEST_MODULE = {"pipeline.py": 300, "cli.py": 300}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _stage_of(path: Path) -> str | None:
    name = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    return name if name in STAGES else None


def _imported_stages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "rag" and len(parts) > 1 and parts[1] in STAGES:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("path", [p for p in _modules() if _stage_of(p)], ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_stage_imports_another(path):
    others = _imported_stages(path) - {_stage_of(path)}
    # The Ray engine runs the Indexer's own steps on workers: it is the one engine of indexing.
    if _stage_of(path) == "engines":
        others -= {"indexing"}
    assert not others, f"{path.name} imports the stage(s) {sorted(others)}; hand it what it needs instead"


def test_no_function_is_too_long_to_read():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, f"functions over {LONGEST_FUNCTION} lines: {long}"


@pytest.mark.parametrize(("name", "limit"), LONGEST_MODULE.items())
def test_the_wiring_stays_small(name, limit):
    lines = len((PACKAGE / name).read_text(encoding="utf-8").splitlines())
    assert lines <= limit, f"rag/{name} has {lines} lines (at most {limit}): move what is not wiring out"
