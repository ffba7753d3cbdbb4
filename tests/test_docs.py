"""Docs stay true: every ```python block in README.md and docs/*.md runs, and docs/api.md is current."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(page: Path) -> list[str]:
    return PYTHON_BLOCK.findall(page.read_text())


@pytest.mark.parametrize(
    "page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_every_python_block_in_page_runs(page, tmp_path, monkeypatch):
    # A page's blocks share one namespace, in order, as a reader would run them.
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for number, block in enumerate(python_blocks(page), start=1):
        code = compile(block, f"{page.name}[block {number}]", "exec")
        exec(code, namespace)


def test_api_reference_is_current():
    spec = importlib.util.spec_from_file_location("gen_api_docs", ROOT / "scripts" / "gen_api_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.render()
    actual = (ROOT / "docs" / "api.md").read_text()
    assert actual == expected, "docs/api.md is stale: run .venv/bin/python scripts/gen_api_docs.py"


def test_package_import_direction_lisa_never_imports_diagnostics():
    offenders = [
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "lisa").rglob("*.py")
        if re.search(r"^\s*(from|import)\s+diagnostics\b", path.read_text(), re.MULTILINE)
    ]
    assert offenders == []
