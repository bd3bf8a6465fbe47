"""The code a result depends on, read as syntax: the syntax tree of a module, or of one class or
function in it, without docstrings (comments and layout never reach a syntax tree) and, unless asked,
without the functions marked :func:`presentation`. Torch-free, so a book build can hash pages cheaply.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path


def presentation(fn):
    """Mark a function that only draws or tabulates results. Cache keys leave its code out, so
    restyling a figure or a table never throws away a trained module or a computed result."""
    fn.__pemnb_presentation__ = True
    return fn


def syntax_of(path: str | Path, qualname: str = "", *, presentation: bool = False) -> str:
    """``ast.dump`` of the file at `path`, or of the class or function `qualname` in it (``"Bench.train"``),
    without docstrings, and without @presentation functions unless `presentation` is True."""
    path = Path(path)
    st = path.stat()
    return _syntax(path, st.st_mtime_ns, st.st_size, qualname, presentation)


@functools.lru_cache(maxsize=512)
def _syntax(path: Path, mtime_ns: int, size: int, qualname: str, keep_presentation: bool) -> str:
    # keyed on the file's mtime and size: every cache key asks, and parsing once per edit is enough
    node: ast.AST = ast.parse(path.read_text(encoding="utf-8"))
    for name in filter(None, qualname.split(".")):
        found = [n for n in getattr(node, "body", [])
                 if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name]
        if not found:
            raise ValueError(f"{path.name} has no {qualname!r}")
        node = found[0]
    for n in ast.walk(node):
        body = getattr(n, "body", None)
        if not isinstance(body, list):
            continue
        if not keep_presentation:
            body[:] = [b for b in body if not _is_presentation(b)]
        if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            body[:] = body[1:] or [ast.Pass()]
    return ast.dump(node)


def _is_presentation(node: ast.AST) -> bool:
    decorators = getattr(node, "decorator_list", [])
    return any((isinstance(d, ast.Name) and d.id == "presentation")
               or (isinstance(d, ast.Attribute) and d.attr == "presentation") for d in decorators)
