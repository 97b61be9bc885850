"""The packaged training recipes: one YAML file per reproduced table row, demo or smoke test.

They ship inside the wheel, so ``tfrobust train --config NAME`` finds them from
any folder; ``tfrobust recipes`` lists them. This module imports nothing heavy.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["RECIPE_DIR", "names", "summary"]

RECIPE_DIR = Path(__file__).resolve().parent
"""The folder of the packaged recipes."""


def names() -> list[str]:
    """The packaged recipes' names, sorted."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def summary(name: str) -> str:
    """The first comment line of recipe ``name`` (its one-line description)."""
    for line in (RECIPE_DIR / f"{name}.yaml").read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
