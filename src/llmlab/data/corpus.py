"""The bundled demo corpus: the docstrings of the Python standard library installed with this interpreter.

Every Python installation ships the standard library's sources, so the corpus needs no download.
The documents are read from the source files with `ast` (nothing is imported), in sorted order of
module and file names, with exact duplicates and very short docstrings dropped; the result is
the same on every run of the same Python version.
"""

from __future__ import annotations

import ast
import os
import sys
import sysconfig
from collections.abc import Iterator

from llmlab.errors import DataError

DEFAULT_MAX_CHARS = 4_000_000
MIN_DOCSTRING_CHARS = 40
SKIPPED_DIRECTORIES = frozenset({"test", "tests", "idle_test", "__pycache__"})
DOCUMENT_SEPARATOR = "\n\n"


def stdlib_directory() -> str:
    """Return the directory holding the standard library's Python sources."""
    return sysconfig.get_paths()["stdlib"]


def stdlib_source_files(stdlib: str | None = None) -> list[str]:
    """List the standard library's .py files, top-level modules in sorted order, package files sorted within."""
    stdlib = stdlib or stdlib_directory()
    files = []
    for name in sorted(sys.stdlib_module_names):
        module_file = os.path.join(stdlib, name + ".py")
        package_dir = os.path.join(stdlib, name)
        if os.path.isfile(module_file):
            files.append(module_file)
        elif os.path.isfile(os.path.join(package_dir, "__init__.py")):
            files.extend(_package_files(package_dir))
    return files


def _package_files(package_dir: str) -> Iterator[str]:
    for root, dirs, names in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRECTORIES)
        for name in sorted(names):
            if name.endswith(".py"):
                yield os.path.join(root, name)


def _docstrings(source: str) -> Iterator[tuple[str, str]]:
    tree = ast.parse(source)
    pending = [(tree, "")]
    while pending:
        node, qualname = pending.pop(0)
        docstring = ast.get_docstring(node, clean=True)
        if docstring:
            yield qualname, docstring
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                pending.append((child, f"{qualname}.{child.name}" if qualname else child.name))


def bundled_documents(max_chars: int | None = DEFAULT_MAX_CHARS) -> list[dict]:
    """Return the corpus as documents `{"text": docstring, "meta": {"source": file, "name": qualname}}`, at most max_chars of text."""
    stdlib = stdlib_directory()
    files = stdlib_source_files(stdlib)
    if not files:
        raise DataError(f"no standard-library sources were found under {stdlib}, so the bundled corpus cannot be built.")
    documents: dict[str, dict] = {}
    total_chars = 0
    for path in files:
        try:
            with open(path, encoding="utf-8") as file:
                source = file.read()
            docstrings = list(_docstrings(source))
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        relative_path = os.path.relpath(path, stdlib).replace(os.sep, "/")
        for qualname, text in docstrings:
            if len(text) < MIN_DOCSTRING_CHARS or text in documents:
                continue
            if max_chars is not None and total_chars + len(text) > max_chars:
                return list(documents.values())
            documents[text] = {"text": text, "meta": {"source": relative_path, "name": qualname}}
            total_chars += len(text)
    return list(documents.values())


def bundled_corpus(max_chars: int | None = DEFAULT_MAX_CHARS) -> str:
    """Return the corpus as one string: the documents' texts joined by blank lines."""
    return DOCUMENT_SEPARATOR.join(document["text"] for document in bundled_documents(max_chars))
