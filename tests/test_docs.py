"""Docs point at real things: no docstring cites a file outside the repository, and every path or module the
architecture page and the package docstrings name exists."""
from __future__ import annotations

import re

from corr3d.config import REPO_ROOT

OUTSIDE = ("paper.md", "findings.md", "peers.md", "environment.md", "docs/conventions", "shared/reference")


def _sources():
    return sorted((REPO_ROOT / "corr3d").rglob("*.py"))


def test_no_citation_of_files_outside_the_repository():
    bad = [f"{p.relative_to(REPO_ROOT)}: {name}" for p in _sources() for name in OUTSIDE if name in p.read_text()]
    assert not bad, "cited files that are not in the repository: " + ", ".join(bad)


def test_architecture_page_names_existing_paths():
    text = (REPO_ROOT / "docs" / "architecture.md").read_text()
    paths = set(re.findall(r"`((?:corr3d|tests|experiments|data_prep|docs)/[\w/.<>-]*)`", text))
    assert len(paths) > 10
    missing = [p for p in paths if "<" not in p and not (REPO_ROOT / p).exists()]
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"
    assert "docs/architecture.md" in (REPO_ROOT / "README.md").read_text()


def test_named_corr3d_modules_exist():
    """``corr3d.a.b`` in a docstring: the longest module prefix exists and defines the first remaining name."""
    missing = []
    for p in _sources():
        for name in set(re.findall(r"``(corr3d(?:\.\w+)+)``", p.read_text())):
            if not _resolves(name.split(".")):
                missing.append(f"{p.relative_to(REPO_ROOT)}: {name}")
    assert not missing, f"docstrings name modules or attributes that do not exist: {missing}"


def _module_file(parts: list[str]):
    base = REPO_ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _resolves(parts: list[str]) -> bool:
    for k in range(len(parts), 0, -1):
        module = _module_file(parts[:k])
        if module is not None:
            return k == len(parts) or re.search(rf"\b{parts[k]}\b", module.read_text()) is not None
    return False


def test_readme_names_existing_paths():
    """Every repository path the README names in backticks or links exists (placeholders like <run> excepted)."""
    text = (REPO_ROOT / "README.md").read_text()
    named = set(re.findall(r"`((?:corr3d|tests|experiments|data_prep|docs|\.ci)/[\w/.-]*)`", text))
    named |= set(re.findall(r"\]\(((?:corr3d|tests|experiments|data_prep|docs)/[\w/.-]*)\)", text))
    assert len(named) > 10
    missing = sorted(p for p in named if not (REPO_ROOT / p.rstrip("/")).exists())
    assert not missing, f"README.md names paths that do not exist: {missing}"
