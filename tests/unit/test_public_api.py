"""The engine's public surface: ``engine.__all__`` is explicit, lazy, and the only thing ``app/`` imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import engine

ROOT = Path(__file__).resolve().parents[2]


def test_every_exported_name_resolves() -> None:
    for name in engine.__all__:
        assert getattr(engine, name) is not None, name


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        engine.no_such_thing  # noqa: B018
    except AttributeError as err:
        assert "no_such_thing" in str(err)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_engine_is_cheap() -> None:
    code = "import sys, engine; print(sorted(m for m in ('httpx', 'asyncio', 'sqlite3') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_app_imports_only_the_public_engine_api() -> None:
    offenders = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine."):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}")
            if isinstance(node, ast.Import):
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name}" for a in node.names
                              if a.name.startswith("engine.")]
    assert offenders == []


def test_engine_never_imports_qt() -> None:
    for path in sorted((ROOT / "engine").rglob("*.py")):
        text = path.read_text()
        assert "PySide6" not in text and "qasync" not in text, path
