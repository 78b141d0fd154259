"""No function in eo_etl/ runs over MAX_LINES lines (signature to last line) unless its docstring says why it is
long: a long function is split into named steps, or says in one sentence why it reads better whole."""

import ast
import re
from pathlib import Path

MAX_LINES = 40
PACKAGE = Path(__file__).resolve().parent.parent / "eo_etl"
REASON = re.compile(r"\blong\b", re.IGNORECASE)  # the word, not "longitude" or "belongs"


def long_functions() -> dict[str, int]:
    """Every function over MAX_LINES lines whose docstring does not say it is long, with its length."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_LINES and not REASON.search(ast.get_docstring(node) or ""):
                found[f"{path.relative_to(PACKAGE).as_posix()}: {node.name}"] = lines
    return found


def test_no_function_is_long_without_a_reason_in_its_docstring():
    offenders = long_functions()
    assert not offenders, f"over {MAX_LINES} lines, split them or say why in the docstring: {offenders}"
