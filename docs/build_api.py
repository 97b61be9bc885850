"""Builds the API reference from the docstrings with pdoc; any pdoc warning fails the build.

``make docs`` runs it (``python docs/build_api.py [--out build/api]``). pdoc imports every module
of ``tfrobust``; that needs neither a GPU nor the internet (CUDA is hidden here). pdoc reports, as
Python warnings, a module it cannot import, source or a type annotation it cannot parse, a module
named twice, an include it cannot read; this script records those, adds every public module, class and
function without a docstring (a method that overrides a base class's, a Keras hook, is documented
there), and exits 1 naming each, so broken
or missing docstrings fail CI like errors.
"""

import argparse
import html
import importlib
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # document this checkout, even beside an editable install of another


def _from_pdoc(warning: warnings.WarningMessage) -> bool:
    """Whether ``warning`` was raised by pdoc itself (not by a library it imports)."""
    import pdoc  # pylint: disable=import-outside-toplevel

    return Path(warning.filename).resolve().is_relative_to(Path(pdoc.__file__).resolve().parent)


def modules() -> list[str]:
    """Every public module of the ``tfrobust`` source tree, by file.

    A package's ``__all__`` lists its API, not its submodules, so pdoc's own walk stops at the
    packages; a submodule whose name is also in its package's ``__all__`` (``attacks.apgd``, the
    module and the function) is left to that walk, which pdoc would otherwise report as repeated.
    """
    names = []
    for path in sorted((REPO / "tfrobust").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if any(part.startswith("_") for part in parts):
            continue
        parent = importlib.import_module(".".join(parts[:-1])) if len(parts) > 1 else None
        if parent is None or parts[-1] not in getattr(parent, "__all__", ()):
            names.append(".".join(parts))
    return names


def _overrides(cls: type, name: str) -> bool:
    """Whether ``cls.name`` overrides a base class's (a Keras hook: the base documents it)."""
    return any(name in vars(base) for base in cls.__mro__[1:])


def undocumented(names: list[str]) -> list[str]:
    """The public modules, classes and functions defined in ``names`` that have no docstring."""
    import pdoc.doc  # pylint: disable=import-outside-toplevel

    missing = []
    for name in names:
        module = pdoc.doc.Module(importlib.import_module(name))
        docs = [module] + [m for m in module.members.values() if m.kind in ("class", "function")
                           and getattr(m.obj, "__module__", None) == name]  # defined here, not re-exported
        docs += [m for c in docs if isinstance(c, pdoc.doc.Class) for m in c.own_members
                 if m.kind == "function" and not m.name.startswith("_") and not _overrides(c.obj, m.name)]
        missing += [f"{d.kind} {d.fullname} has no docstring" for d in docs if not d.docstring.strip()]
    return missing


def write_index(out: Path) -> None:
    """Replaces pdoc's ``index.html`` (a redirect to ``tfrobust``, whose ``__all__`` lists no
    submodules) with a list of every page pdoc wrote, each with its module's first docstring line."""
    pages = sorted((p.relative_to(out) for p in out.rglob("*.html") if p.name != "index.html"),
                   key=lambda page: page.with_suffix("").parts)
    rows = []
    for page in pages:
        name = ".".join(page.with_suffix("").parts)
        summary = (importlib.import_module(name).__doc__ or "").strip().splitlines()[:1]
        rows.append(f'<li><a href="{page.as_posix()}"><code>{name}</code></a> {html.escape("".join(summary))}</li>')
    (out / "index.html").write_text(
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>tfrobust API reference</title></head>\n'
        "<body><h1>tfrobust API reference</h1>\n<p>Built from the docstrings by <code>make docs</code>; "
        "the guides are in <code>docs/</code>.</p>\n<ul>\n" + "\n".join(rows) + "\n</ul></body></html>\n")


def build(out: Path) -> list[str]:
    """Renders ``tfrobust`` into ``out``; returns pdoc's warnings and the public API without a
    docstring (both empty when the build is clean)."""
    import pdoc  # pylint: disable=import-outside-toplevel

    pdoc.render.configure(docformat="google", show_source=False,
                          footer_text="tfrobust: built from the docstrings by make docs")
    names = modules()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*names, output_directory=out)
    write_index(out)
    return [f"{w.category.__name__}: {w.message}" for w in caught if _from_pdoc(w)] + undocumented(names)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--out`` (default ``build/api``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "api")
    args = parser.parse_args(argv)
    problems = build(args.out)
    for problem in problems:
        print(f"docs: {problem}", file=sys.stderr)
    if problems:
        print(f"docs: {len(problems)} warning(s), treated as errors", file=sys.stderr)
        return 1
    print(f"docs: API reference written to {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
