"""Every file the documentation points at exists: Markdown links and repository paths named in
README.md, CONTRIBUTING.md, docs/*.md and setup.cfg (whose comment once cited a docs/RECIPES.md that did not exist)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "CONTRIBUTING.md", REPO / "setup.cfg", *sorted((REPO / "docs").glob("*.md"))]

# [text](target): the target, without an #anchor; web links and in-page anchors are not files.
LINK = re.compile(r"\]\(([^)\s]+)\)")
# A path into the repository named in prose: a top-level folder, then path characters, then an extension.
TOP = "|".join(sorted(p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith((".venv", ".git"))) + [".ci"])
NAMED = re.compile(rf"(?<![\w./~-])((?:{TOP})/[\w./-]*\w\.(?:md|py|yaml|yml|csv|sh|cfg|toml|json))\b")


def references(path: Path) -> list[tuple[int, str, Path]]:
    """(line number, as written, the file it means) for each reference in ``path``; a file that a
    command of the doc writes (``git show ... > experiments/x.yaml``) is no reference."""
    found = []
    text = path.read_text()
    written = set(re.findall(r">\s*(\S+)", text))
    for number, line in enumerate(text.splitlines(), 1):
        for target in LINK.findall(line):
            if not re.match(r"[a-z]+:|#", target):
                found.append((number, target, (path.parent / target.split("#")[0]).resolve()))
        for target in NAMED.findall(line):
            if target not in written:
                found.append((number, target, REPO / target))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_file_the_docs_name_exists(doc: Path) -> None:
    missing = [f"{doc.name}:{number}: {target}" for number, target, file in references(doc) if not file.exists()]
    assert not missing, "the docs point at files that do not exist:\n" + "\n".join(missing)


def test_the_link_check_sees_the_kinds_of_reference() -> None:
    """Both kinds are found (a check that finds nothing passes for nothing)."""
    readme = {target for _, target, _ in references(REPO / "README.md")}
    assert "docs/RECIPES.md" in {target for _, target, _ in references(REPO / "setup.cfg")}
    assert any(target.startswith("experiments/") for target in readme)
