"""tools/canary.py, without building its environment: it reads the pins, turns pytest's JUnit XML into the list of
what broke, and writes a report that says which libraries moved and what the move breaks."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("canary", ROOT / "tools" / "canary.py")
canary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(canary)


def test_every_core_library_is_pinned():
    pins = canary.pinned_versions()
    assert pins["torch"] == "2.13.0" and set(canary.CORE) <= set(pins)


def test_junit_failures_name_the_test_and_the_first_line_of_its_error(tmp_path):
    xml = tmp_path / "unit.xml"
    xml.write_text(
        '<testsuites><testsuite><testcase classname="tests.test_models" name="test_ok"/>'
        '<testcase classname="tests.test_models" name="test_gpt"><failure message="AttributeError: no attribute&#10;'
        'more">tb</failure></testcase><testcase classname="tests.test_x" name="test_y"><error message="">boom\n'
        "</error></testcase></testsuite></testsuites>"
    )
    total, failures = canary.junit_failures(xml)
    assert total == 3 and failures == [
        {"test": "tests/test_models::test_gpt", "message": "AttributeError: no attribute"},
        {"test": "tests/test_x::test_y", "message": "boom"},
    ]
    assert canary.junit_failures(tmp_path / "missing.xml")[1][0]["message"].startswith("no results")


def test_report_marks_what_moved_and_says_what_breaks(tmp_path):
    facts = {
        "torch_policy": "held at the pin 2.13.0",
        "log": "runs/canary-x/canary.log",
        "install": "resolved and installed",
        "versions": {"torch": ("2.13.0", "2.13.0+cpu"), "transformers": ("5.23.0", "5.24.0")},
        "unit": {"total": 3, "failures": [{"test": "tests/test_models::test_gpt", "message": "AttributeError"}]},
        "verdict": "moving the pins (transformers) breaks 1 test(s)",
    }
    text = canary.write_report(tmp_path, facts).read_text()
    assert "| torch | 2.13.0 | 2.13.0+cpu |" in text and "| transformers | 5.23.0 | 5.24.0 (moved) |" in text
    assert "unit: 3 run, 1 failed" in text and "notebooks: not run" in text and "**Verdict:** moving" in text
    assert json.loads((tmp_path / "report.json").read_text())["unit"]["total"] == 3
