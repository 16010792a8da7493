"""Small helpers shared by the test modules."""

from __future__ import annotations

from pathlib import Path

PROSE = {
    "alpha.md": "# Alpha\n\nThe alpha reactor runs on molten salt and produces 300 megawatts of heat.\n\n"
    + "Its control rods are made of boron carbide. " * 60,
    "beta.txt": "Beta notes. The beta telescope observes infrared light from distant galaxies.\n\n"
    + "Mirrors are cooled with liquid helium to reduce noise. " * 40,
    "gamma.txt": "Gamma is a recipe for sourdough bread with rye flour and a long cold fermentation.",
}


def make_folder(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    return root
