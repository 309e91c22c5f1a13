"""Document sources.

`python_docs`: the built-in offline corpus, the docstrings of the running Python's standard
library: real English prose that every Python installation carries, so no download is needed.
"""

import ast
import sysconfig
from pathlib import Path
from typing import Iterator


def python_docs(min_chars: int = 0) -> Iterator[str]:
    """Docstrings of modules, classes and functions of the standard library, in a fixed order."""
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    yield doc
