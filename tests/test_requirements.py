"""The lock is exact, environment.yml mirrors it, and the installed environment matches it."""

import importlib.metadata as md
import re
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "requirements.txt").read_text()
LINES = [line for line in TEXT.splitlines() if line and not line.startswith("#")]
DIRECT = {
    Requirement(line.split("#")[0]).name.lower()
    for line in TEXT.split("# ---- locked transitive")[0].splitlines()
    if line and not line.startswith("#")
}


def _pins(lines):
    return {Requirement(line.split("#")[0]).name.lower(): line.split("#")[0].strip().split("==")[1] for line in lines}


def test_every_requirement_is_pinned_exactly_and_says_why():
    for line in LINES:
        requirement, _, comment = line.partition("#")
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[\w.+]+", requirement.strip()), line
        assert comment.strip(), f"{line!r}: say which chapters need it"
    assert len(_pins(LINES)) == len(LINES), "a package is listed twice"


def test_torch_is_the_pin_that_installs_from_local_disk():
    assert _pins(LINES)["torch"] == "2.13.0"


def test_environment_yml_installs_the_same_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict))
    yml_pins = [line for line in pip_section if "==" in line]
    assert _pins(yml_pins) == _pins(LINES)
    python = next(dep for dep in env["dependencies"] if isinstance(dep, str) and dep.startswith("python="))
    assert Version("3.11") <= Version(python.split("=")[1]) < Version("3.13")


def test_installed_environment_matches_the_lock():
    mismatched = {}
    for name, pinned in _pins(LINES).items():
        try:
            installed = Version(md.version(name)).public
        except md.PackageNotFoundError:
            assert name not in DIRECT, f"{name} is a direct requirement but is not installed: run `make setup`"
            continue  # a transitive dependency of another platform
        if installed != pinned:
            mismatched[name] = (pinned, installed)
    assert not mismatched, f"run `make setup` (pinned, installed): {mismatched}"
