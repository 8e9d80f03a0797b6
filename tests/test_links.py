"""Links and paths in the course's prose resolve: markdown links in every .md file and notebook markdown cell
(files and #anchors, README's included), repository paths written in backticks (`utils/assets.py`), and the README's
course table linking exactly the notebooks that exist (planned chapters have no link). Runs in well under a second."""

import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Generated or git-ignored folders: prose may name them although a fresh clone does not have them yet.
GENERATED = ("data/cache", "runs", ".venv", ".venv-canary")
#: Paths prose names on purpose as examples of what not to do.
COUNTER_EXAMPLES = {"utils/misc.py"}
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
TOP_LEVEL = {p.name for p in ROOT.iterdir()} - {".git"}


def markdown_documents(root: Path = ROOT) -> dict[Path, str]:
    """Every markdown text of the repository: .md files and the markdown cells of notebooks (joined per notebook).
    Generated folders and hidden ones (but .github) are not entered."""
    skip = {root / name for name in GENERATED}
    docs = {}
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(
            d
            for d in subfolders
            if Path(folder, d) not in skip and (not d.startswith(".") or d == ".github") and d != "node_modules"
        )
        for name in sorted(files):
            path = Path(folder, name)
            if name.endswith(".md"):
                docs[path] = path.read_text(encoding="utf-8")
            elif name.endswith(".ipynb"):
                cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
                docs[path] = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return docs


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"[`*_]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors_of(text: str) -> set[str]:
    """Anchors a markdown text defines: GitHub's ids (with -1, -2 for repeats) and JupyterLab's (spaces to -)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", text), re.MULTILINE):
        slug = github_anchor(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found |= {slug if count == 0 else f"{slug}-{count}", heading.strip().replace(" ", "-")}
    found |= set(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", text))
    return found


def broken_links(path: Path, text: str, documents: dict[Path, str], root: Path = ROOT) -> list[str]:
    """Markdown links in `text` (from `path`) whose file or anchor does not exist; web links are not fetched."""
    problems = []
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{path.relative_to(root)}: link to missing {target}")
        elif anchor and linked in documents and anchor not in anchors_of(documents[linked]):
            problems.append(f"{path.relative_to(root)}: no heading for #{anchor} in {linked.name}")
    return problems


def missing_paths(path: Path, text: str, root: Path = ROOT, top_level: set[str] = TOP_LEVEL) -> list[str]:
    """Repository paths written in backticks (each word of a command too) that do not exist. Only words that
    start with a top-level entry of the repository count; generated folders, placeholders and counter-examples
    are skipped."""
    problems = []
    for span in CODE_SPAN.findall(FENCE.sub("", text)):
        for word in span.split():
            word = word.strip("'\",;()").rstrip(".:")
            first = word.split("/", 1)[0]
            if "/" not in word or first not in top_level or re.search(r"[<>*{}$]|NN|\.\.\.", word):
                continue
            if word.rstrip("/") in COUNTER_EXAMPLES or any(word.startswith(g) for g in GENERATED):
                continue
            if not (root / word).exists() and not (path.parent / word).exists():
                problems.append(f"{path.relative_to(root)}: `{word}` does not exist")
    return problems


DOCUMENTS = markdown_documents()


def test_markdown_links_and_anchors_resolve():
    problems = [p for path, text in DOCUMENTS.items() for p in broken_links(path, text, DOCUMENTS)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_paths_named_in_prose_exist():
    problems = [p for path, text in DOCUMENTS.items() for p in missing_paths(path, text)]
    assert not problems, "paths that do not exist:\n" + "\n".join(problems)


def test_readme_course_table_links_exactly_the_notebooks_that_exist():
    rows = re.findall(r"^\| (\d\d) \| (.+?) \|", (ROOT / "README.md").read_text(encoding="utf-8"), re.MULTILINE)
    assert len(rows) == 16, "README.md's course table has one row per chapter, 00-15"
    present = {p.name[:2]: p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    for number, cell in rows:
        linked = re.findall(r"\]\((notebooks/[^)]+)\)", cell)
        if number in present:
            assert linked == [f"notebooks/{present[number]}"], f"README row {number}: link notebooks/{present[number]}"
        else:
            assert not linked, f"README row {number}: the notebook is planned, so the row has no link yet"


def test_the_checker_catches_what_it_should(tmp_path):
    """The checks above can fail: a planted broken file link, anchor and path are each reported."""
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "real.py").write_text("")
    doc = tmp_path / "doc.md"
    text = (
        "# Quick start\n\n[ok](#quick-start) [ok](utils/real.py) [web](https://example.org/x) "
        "[gone](notebooks/07_missing.ipynb) [bad anchor](#no-such-heading) `utils/real.py` `utils/gone.py`\n"
        "```\n[in a fence](not/checked.md)\n```\n"
    )
    doc.write_text(text)
    links = broken_links(doc, text, {doc: text}, tmp_path)
    paths = missing_paths(doc, text, tmp_path, {"utils", "notebooks"})
    assert links == [
        "doc.md: link to missing notebooks/07_missing.ipynb",
        "doc.md: no heading for #no-such-heading in doc.md",
    ]
    assert paths == ["doc.md: `utils/gone.py` does not exist"]


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Quick start", "quick-start"),
        ("`make doctor`: will it run here?", "make-doctor-will-it-run-here"),
        ("Budgets, measured", "budgets-measured"),
        ("ModuleNotFoundError: No module named 'utils'", "modulenotfounderror-no-module-named-utils"),
    ],
)
def test_github_anchor(heading, anchor):
    assert github_anchor(heading) == anchor
