"""The README and docs/ stay short, linked and true; code comments cite no commits.

Figures and their commits go stale in code (a comment cannot be regenerated); they belong in
docs/ and reports/, where a link from the code finds them.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import Settings

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_MAX_LINES = 400
PAGES = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "reports" / "bench" / "HISTORY.md"]
CODE_DIRS = ("models", "training", "service", "loadtest", "tests")
# RNNSERVE_ variables that are not service settings: the datasets' folder and download cache
OTHER_VARIABLES = {"RNNSERVE_DATA_DIR", "RNNSERVE_CACHE_DIR"}

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# 7 to 40 hex digits with at least one digit and one letter: an abbreviated or full commit
# (plain numbers and hex-only words such as "defaced" do not match)
COMMIT = re.compile(r"(?<![0-9A-Za-z_])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}(?![0-9A-Za-z_])")


def prose(text: str) -> str:
    """`text` without fenced code blocks and inline code, where a bracket is not a link."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        name, n = slug(heading), 1
        while name in found:  # GitHub numbers repeated headings
            name, n = f"{slug(heading)}-{n}", n + 1
        found.add(name)
    return found


def broken_links(page: Path) -> Iterator[str]:
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            yield f"{target}: no such file"
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            yield f"{target}: no heading with that anchor in {linked.name}"


def commented_text(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every comment and docstring of a Python file; string data is left out."""
    source = path.read_text(encoding="utf-8")
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                yield node.body[0].lineno, docstring


def commit_citations() -> Iterator[str]:
    for directory in CODE_DIRS:
        for path in sorted((REPO / directory).rglob("*.py")):
            for line, text in commented_text(path):
                for token in COMMIT.findall(text):
                    yield f"{path.relative_to(REPO)}:{line}: {token}"
    for name in ("Makefile", "pyproject.toml"):
        for line, text in enumerate((REPO / name).read_text(encoding="utf-8").splitlines(), 1):
            for token in COMMIT.findall(text):
                yield f"{name}:{line}: {token}"


def test_the_readme_is_a_front_door_not_a_notebook():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    assert list(broken_links(page)) == []


def test_the_link_check_catches_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## Errors and limits\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#errors-and-limits) [file](gone.md) [anchor](other.md#nope) "
                    "[web](https://example.com/x) `[code](gone.md)`\n```\n[fenced](gone.md)\n```\n")
    assert [problem.split(":")[0] for problem in broken_links(page)] == ["gone.md", "other.md#nope"]


def test_slugs_follow_githubs_rule():
    assert slug("The 2026-12-04 17:30 benchmark: the distilled classifier, on an AVX512-BF16 CPU") == (
        "the-2026-12-04-1730-benchmark-the-distilled-classifier-on-an-avx512-bf16-cpu")
    assert slug("`POST /generate` and `POST /generate_stream`") == "post-generate-and-post-generate_stream"


def test_every_setting_the_docs_name_exists():
    settings = {name for name, _, _ in Settings.describe()} | OTHER_VARIABLES
    for page in PAGES[:-1]:  # the history may name settings of its day
        named = set(re.findall(r"RNNSERVE_[A-Z0-9_]*[A-Z0-9]", page.read_text(encoding="utf-8")))
        assert named <= settings, (page.name, named - settings)


def test_no_code_comment_makefile_or_pyproject_cites_a_commit():
    assert list(commit_citations()) == []


def test_the_commit_check_finds_hashes_in_comments_only(tmp_path):
    assert COMMIT.findall("before 7aceba2 and after fba42ff3c0") == ["7aceba2", "fba42ff3c0"]
    assert COMMIT.findall("defaced 1234567 deadline e83bd97x") == []
    source = tmp_path / "module.py"
    source.write_text('"""Docstring citing 57936de."""\n\nSHA = "4f374fd2"  # data, not a comment\n'
                      "x = 1  # since b4b475f\n")
    found = [(line, COMMIT.findall(text)) for line, text in commented_text(source)]
    assert sorted((line, hits) for line, hits in found if hits) == [(1, ["57936de"]), (4, ["b4b475f"])]
