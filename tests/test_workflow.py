"""The GitHub Actions workflow cannot run here, so its structure is checked: the triggers the course promises, each
job on its schedule, and every `make` target it calls existing in the Makefile."""

import re
from pathlib import Path

import yaml

from utils import doctor

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = yaml.safe_load((ROOT / ".github" / "workflows" / "course.yml").read_text())
TRIGGERS = WORKFLOW.get("on", WORKFLOW.get(True))  # YAML 1.1 reads the key `on` as True
JOBS = WORKFLOW["jobs"]
CRONS = [entry["cron"] for entry in TRIGGERS["schedule"]]


def _runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def _make_targets(text: str) -> set[str]:
    return set(re.findall(r"\bmake ([a-z][\w-]*)", text))


def test_triggers_push_pull_request_nightly_weekly_and_by_hand():
    assert {"push", "pull_request", "schedule", "workflow_dispatch"} <= set(TRIGGERS)
    nightly, weekly = CRONS
    assert nightly.split()[2:] == ["*", "*", "*"] and weekly.split()[2:4] == ["*", "*"] and weekly.split()[4] != "*"


def test_every_make_target_the_workflow_calls_exists():
    phony = re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1).split()
    called = set().union(*(_make_targets(_runs(job)) for job in JOBS.values()))
    assert called and called <= set(phony), f"not Makefile targets: {called - set(phony)}"


def test_each_job_runs_its_target_on_its_trigger():
    assert "make test" in _runs(JOBS["test"]) and "schedule" in JOBS["test"]["if"]  # push and PR, not the crons
    for name, target, cron in [
        ("course", "make course", CRONS[0]),
        ("browser", "make test-browser", CRONS[0]),
        ("canary", "make canary", CRONS[1]),
    ]:
        assert target in _runs(JOBS[name]) and f"'{cron}'" in JOBS[name]["if"], name
    for job in JOBS.values():
        referenced = re.findall(r"github\.event\.schedule == '([^']+)'", job.get("if", ""))
        assert set(referenced) <= set(CRONS) and job["timeout-minutes"] > 0


def test_canary_is_non_blocking_on_linux_macos_and_windows_through_wsl():
    canary = JOBS["canary"]
    assert canary["continue-on-error"] is True and canary["strategy"]["fail-fast"] is False
    systems = canary["strategy"]["matrix"]["os"]
    assert [any(s.startswith(prefix) for s in systems) for prefix in ("ubuntu", "macos", "windows")] == [True] * 3
    wsl = [step for step in canary["steps"] if step.get("shell", "").startswith("wsl-bash")]
    assert wsl and "make canary" in wsl[0]["run"]


def test_browser_job_installs_debian_chromium_and_python_in_the_course_range():
    browser = JOBS["browser"]
    assert "bookworm" in browser["container"] and "apt-get install" in _runs(browser) and "chromium" in _runs(browser)
    clauses = doctor.requires_python()
    versions = {
        step["with"]["python-version"]
        for job in JOBS.values()
        for step in job["steps"]
        if "setup-python" in step.get("uses", "")
    }
    versions.add(browser["container"].split(":")[1].split("-")[0])
    for version in versions:
        assert doctor.version_allowed((*map(int, version.split(".")), 99), clauses), version
