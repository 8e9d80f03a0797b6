"""Every committed notebook follows CONTRIBUTING.md: a title cell, a papermill parameters cell driven by
COURSE_SMOKE, committed outputs free of errors and local paths, a story that leads, and short code cells."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((ROOT / "notebooks" / "solutions").glob("[0-9][0-9]_*.ipynb"))
NOTEBOOKS = CHAPTERS + SOLUTIONS


def test_the_course_has_its_tour():
    assert CHAPTERS and CHAPTERS[0].name == "00_course_tour.ipynb"


def _exercises(chapter: dict) -> list[str]:
    """The numbered items of a chapter's Exercises section."""
    text = "\n".join("".join(c["source"]) for c in chapter["cells"] if c["cell_type"] == "markdown")
    section = re.split(r"^#+\s*Exercises?\s*$", text, flags=re.M | re.I)[-1]
    return re.findall(r"^(\d+)\. ", section, flags=re.M)


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda path: path.stem)
def test_a_solution_solves_every_exercise_of_its_chapter(solution):
    chapter = ROOT / "notebooks" / solution.name.replace("_solutions", "")
    assert chapter.exists(), f"{solution.name} must be named after its chapter: NN_<chapter stem>_solutions.ipynb"
    nb = json.loads(solution.read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert f"](../{chapter.name})" in text, "link the chapter the exercises come from"
    solved = re.findall(r"^## Exercise (\d+):", text, flags=re.M)
    assert solved == _exercises(json.loads(chapter.read_text())), "one '## Exercise N:' section per exercise, in order"


@pytest.fixture(params=NOTEBOOKS, ids=lambda path: path.stem)
def notebook(request):
    return json.loads(request.param.read_text())


def _code(nb):
    return [cell for cell in nb["cells"] if cell["cell_type"] == "code"]


def test_first_cell_is_a_title_naming_the_book_chapter(notebook):
    first = notebook["cells"][0]
    text = "".join(first["source"])
    assert first["cell_type"] == "markdown" and text.startswith("# ") and "Book chapter" in text


def test_parameters_cell_derives_sizes_from_course_smoke(notebook):
    tagged = [c for c in _code(notebook) if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1 and 'os.environ.get("COURSE_SMOKE") == "1"' in "".join(tagged[0]["source"])


def test_kernel_is_the_portable_python3(notebook):
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"


def test_committed_outputs_exist_without_errors_or_local_paths(notebook):
    code = _code(notebook)
    assert all(cell.get("outputs") is not None for cell in code)
    assert any(cell["outputs"] for cell in code), "commit the outputs of a default-size run"
    outputs = json.dumps([cell["outputs"] for cell in code])
    assert '"output_type": "error"' not in outputs
    for local in (str(ROOT), str(Path.home()) + "/"):
        assert local not in outputs, f"an output shows the local path {local}"


def test_story_leads_and_cells_stay_short(notebook):
    markdown = sum(cell["cell_type"] == "markdown" for cell in notebook["cells"])
    code = _code(notebook)
    assert markdown / len(code) >= 1.5
    long_cells = ["".join(c["source"])[:60] for c in code if len("".join(c["source"]).splitlines()) > 25]
    assert not long_cells, f"move this logic into utils/: {long_cells}"
