"""The shape of the code: no function in tfrobust/ longer than MAX_LINES (issue 23, item 5).

A function's length is counted from its ``def`` line to its last line, less its docstring;
nested functions and methods are counted on their own (and inside their parent).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tfrobust"

MAX_LINES = 60

ALLOWED: dict[str, int] = {}
"""``"module.path:qualified.name"`` -> its length when allowed: functions not yet split. A listed
function may not grow, and leaves the list once it is MAX_LINES or shorter."""


def _length(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def _functions(tree: ast.AST, prefix: str = ""):
    """``(qualified name, length)`` of every function under ``tree``, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, _length(node)
            yield from _functions(node, f"{prefix}{node.name}.<locals>.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def function_lengths() -> dict[str, int]:
    """``"module.path:qualified.name"`` -> length, for every function of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for name, length in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            out[f"{module}:{name}"] = max(length, out.get(f"{module}:{name}", 0))
    return out


def test_the_length_count_skips_the_docstring_only():
    tree = ast.parse('def f():\n    """Doc\n    string."""\n    a = 1\n    return a\n\n\n'
                     'def g():\n    return "not a docstring" if True else None\n')
    assert dict(_functions(tree)) == {"f": 3, "g": 2}


def test_nested_functions_and_methods_have_qualified_names():
    tree = ast.parse("class A:\n    def m(self):\n        def inner():\n            pass\n        return inner\n")
    assert dict(_functions(tree)) == {"A.m": 4, "A.m.<locals>.inner": 2}


def test_no_function_is_longer_than_the_limit():
    lengths = function_lengths()
    assert len(lengths) > 500  # the walk found the package (781 functions when written)
    too_long = {name: n for name, n in lengths.items() if n > MAX_LINES and name not in ALLOWED}
    assert not too_long, (f"functions over {MAX_LINES} lines (docstring excluded); split them into "
                          f"small named functions: {sorted(too_long.items(), key=lambda kv: -kv[1])}")


def test_allowed_functions_do_not_grow_and_leave_the_list_once_short():
    lengths = function_lengths()
    for name, allowed in ALLOWED.items():
        assert name in lengths, f"{name} is allowed but no longer exists: remove it from ALLOWED"
        assert lengths[name] <= allowed, f"{name} grew from {allowed} to {lengths[name]} lines"
        assert lengths[name] > MAX_LINES, f"{name} is {lengths[name]} lines now: remove it from ALLOWED"
