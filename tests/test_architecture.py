"""The arrows point one way: only ``alice.ui`` imports Streamlit/Plotly, nothing else in ``alice`` imports
``alice.ui``, and pages import only Streamlit, ``alice``, ``alice.ui`` and the standard library."""

import ast
import sys
from pathlib import Path

import pytest

from alice import paths

ALICE = paths.REPO_ROOT / "alice"
UI_ONLY = {"streamlit", "plotly"}


def imported_modules(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(paths.REPO_ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join([*base, node.module] if node.module else base))
            else:
                names.add(node.module)
    return names


def top(name: str) -> str:
    return name.split(".")[0]


def library_files() -> list[Path]:
    return sorted(ALICE.rglob("*.py"))


def is_ui(path: Path) -> bool:
    return path.is_relative_to(ALICE / "ui")


@pytest.mark.parametrize("path", [p for p in library_files() if not is_ui(p)], ids=lambda p: str(p.name))
def test_only_alice_ui_imports_streamlit_or_plotly_and_nothing_imports_alice_ui(path):
    modules = imported_modules(path)
    assert not {m for m in modules if top(m) in UI_ONLY}, f"{path} imports Streamlit/Plotly"
    assert not {m for m in modules if m == "alice.ui" or m.startswith("alice.ui.")}, f"{path} imports alice.ui"


def test_the_ui_package_exists_and_is_where_streamlit_is_used():
    ui_imports = set().union(*(imported_modules(p) for p in library_files() if is_ui(p)))
    assert "streamlit" in {top(m) for m in ui_imports}


@pytest.mark.parametrize("path", sorted((paths.REPO_ROOT / "pages").glob("*.py")) + [paths.REPO_ROOT / "app" /
                                                                                   "main.py"],
                         ids=lambda p: p.name)
def test_pages_import_only_streamlit_alice_and_the_standard_library(path):
    allowed = {"streamlit", "alice", "__future__"} | set(sys.stdlib_module_names)
    bad = {m for m in imported_modules(path) if top(m) not in allowed}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_there_are_pages():
    assert len(list((paths.REPO_ROOT / "pages").glob("*.py"))) >= 3
