"""Build the long-documentation benchmark pack: the Python standard library's own documentation (its
docstrings, as `pydoc` reads them), rendered to Markdown, one page per module and one page per public class.

    .venv/bin/python benchmarks/longdoc_pack.py [--out ~/.cache/switchboard-bench/pydoc-pack]

Nothing is downloaded: the pages come from the modules of the interpreter that runs this script, so the pack
is the same on every run of the same Python build (names sorted, members in definition-independent sorted
order, addresses and other run-dependent reprs removed). The manifest (`_manifest.json` beside the pack, not
inside it) records the Python version, the page count and bytes. With Python 3.11 it is ~2,500 pages and
~20 MB: the size of the real product-documentation pack of issue 14.

Page layout (what the chunker sees): `# module` (or `# module.Class`), the docstring, then `## Functions`,
`## Classes` (a short list; each class has its own page), `## Data`, and on a class page `## Methods` and
`## Attributes`; every function or method is a `### name(signature)` section with its docstring.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import inspect
import io
import json
import pkgutil
import re
import sys
import warnings
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("~/.cache/switchboard-bench/pydoc-pack").expanduser()
# Modules that act on import (open a browser, print, start a GUI) or are test suites, demos, or internal tools.
SKIP = {"antigravity", "this", "__hello__", "__phello__", "idlelib", "test", "lib2to3", "tkinter", "turtle",
        "turtledemo", "pydoc_data", "ensurepip", "venv", "msilib", "winreg", "winsound", "msvcrt", "_winapi",
        "nt", "__main__", "xxlimited", "xxlimited_35", "xxsubtype", "_xxtestfuzz", "_testcapi", "sre_compile",
        "sre_parse", "sre_constants", "asyncio.__main__", "sqlite3.__main__", "json.tool", "unittest.__main__",
        "venv.__main__", "pip", "distutils"}
# Installed packages documented beside the standard library (all are dependencies of this project or of its
# dev extra, so every checkout has them; their versions go into the manifest).
EXTRA = ("numpy", "sympy", "sqlalchemy", "networkx", "mpmath", "pydantic", "jinja2", "click", "rich", "hypothesis",
         "PIL", "redis", "cryptography", "starlette", "docx", "anyio", "attr", "fastapi", "httpx", "yaml")
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def module_names(extra: tuple[str, ...] = ()) -> list[str]:
    """The public modules of the standard library and of the installed packages `extra`, sorted."""
    names: set[str] = set()
    for top in sorted(set(sys.stdlib_module_names) | set(extra)):
        if top.startswith("_") or top in SKIP:
            continue
        try:
            module = _import(top)
        except Exception:  # not built on this machine (e.g. a Windows-only module)
            continue
        names.add(top)
        path = getattr(module, "__path__", None)
        if not path:
            continue
        for info in pkgutil.walk_packages(path, prefix=top + ".", onerror=lambda _name: None):
            parts = info.name.split(".")
            internal = any(p.startswith("_") for p in parts[1:]) or {"test", "tests", "testing"} & set(parts)
            if internal or info.name in SKIP:
                continue
            try:
                _import(info.name)
            except Exception:
                continue
            names.add(info.name)
    return sorted(names)


def _import(name: str) -> Any:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(
        io.StringIO()
    ):
        warnings.simplefilter("ignore")
        return importlib.import_module(name)


def _doc(obj: Any) -> str:
    text = inspect.getdoc(obj) or ""
    return _ADDRESS.sub("", text).strip()


def _signature(obj: Any) -> str:
    try:
        return _ADDRESS.sub("", str(inspect.signature(obj)))
    except (TypeError, ValueError):
        return "(...)"


def _public(names: Any) -> list[str]:
    return sorted(n for n in names if not n.startswith("_"))


def _function_section(level: str, name: str, obj: Any) -> str:
    body = _doc(obj)
    return f"{level} {name}{_signature(obj)}\n\n{body}\n" if body else f"{level} {name}{_signature(obj)}\n"


def _defined_here(module: Any, obj: Any) -> bool:
    return getattr(obj, "__module__", None) == module.__name__


def module_page(module: Any) -> str:
    """The module's page: docstring, functions, classes (each with its own methods and properties), data."""
    members = vars(module)
    exported = getattr(module, "__all__", None)
    names = _public(exported if isinstance(exported, list | tuple) else members)
    functions, classes, data = [], [], []
    for name in names:
        obj = members.get(name)
        if obj is None:
            continue
        if inspect.isclass(obj) and _defined_here(module, obj):
            classes.append((name, obj))
        elif (inspect.isfunction(obj) or inspect.isbuiltin(obj)) and (_defined_here(module, obj) or exported):
            functions.append((name, obj))
        elif not inspect.ismodule(obj) and not callable(obj) and isinstance(obj, int | float | str | bytes | tuple):
            data.append((name, obj))
    parts = [f"# {module.__name__}\n", _doc(module) + "\n"]
    if functions:
        parts.append("## Functions\n")
        parts.extend(_function_section("###", n, o) for n, o in functions)
    if classes:
        parts.append("## Classes\n")
        parts.extend(_class_section(n, o) for n, o in classes)
    if data:
        parts.append("## Data\n")
        parts.append("\n".join(f"- `{n}` = `{_ADDRESS.sub('', repr(o))[:200]}`" for n, o in data) + "\n")
    return "\n".join(parts)


def _class_section(name: str, cls: type) -> str:
    parts = [f"### class {name}{_signature(cls)}\n", _doc(cls) + "\n"]
    bases = [b.__qualname__ for b in cls.__bases__ if b is not object]
    if bases:
        parts.append("Bases: " + ", ".join(f"`{b}`" for b in bases) + "\n")
    for attr in _public(vars(cls)):
        raw = vars(cls)[attr]
        if inspect.isroutine(raw) or isinstance(raw, classmethod | staticmethod):
            parts.append(_function_section("####", f"{name}.{attr}", getattr(cls, attr, raw)))
        elif isinstance(raw, property) and _doc(raw):
            parts.append(f"#### {name}.{attr}\n\n{_doc(raw)}\n")
    return "\n".join(parts)


def build(out: Path, extra: tuple[str, ...] = EXTRA) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.md"):
        old.unlink()
    pages = 0
    total = 0
    for name in module_names(extra):
        data = module_page(_import(name)).encode("utf-8")
        (out / f"{name}.md").write_bytes(data)
        pages += 1
        total += len(data)
    versions = {}
    distributions = importlib.metadata.packages_distributions()
    for name in extra:
        for dist in distributions.get(name, [name]):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                versions[dist] = importlib.metadata.version(dist)
    manifest = {"python": sys.version.split()[0], "packages": versions, "pages": pages, "bytes": total,
                "path": str(out)}
    (out.parent / f"{out.name}_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--packages", default=",".join(EXTRA), help="installed packages documented beside the "
                        "standard library (comma-separated)")
    args = parser.parse_args()
    print(json.dumps(build(args.out.expanduser(), tuple(p for p in args.packages.split(",") if p))))


if __name__ == "__main__":
    main()
