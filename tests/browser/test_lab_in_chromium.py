"""The course in a real browser: `make lab` serves JupyterLab, headless Chromium opens notebook 00, switches it
to the course kernel and runs every cell through the UI; no cell may raise and every figure must render.

Run with `make test-browser` (it sets COURSE_BROWSER_TEST=1; `make test` skips this file). Playwright for Python
drives the Chromium installed on the machine (Debian/Ubuntu: `apt-get install -y chromium`; or set CHROMIUM to
any Chromium or Chrome binary); without one the test is skipped and says so. Notebook 00 runs at smoke size on a
copy in a temporary folder, so the committed notebook is never rewritten, with the kernels' non-loopback sockets
blocked as in `make test`. Screenshots go to runs/browser/<timestamp>/.
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "00_course_tour.ipynb"
COURSE_KERNEL_DISPLAY = "Python (pretrain course)"
#: What works for Debian's Chromium as root in a container. Without the background-networking flags Chromium
#: keeps trying to reach Google's services, which floods a closed network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_ALL_TIMEOUT_S = 600

pytestmark = pytest.mark.skipif(
    os.environ.get("COURSE_BROWSER_TEST") != "1", reason="browser test: run it with `make test-browser`"
)


def find_chromium() -> str | None:
    """$CHROMIUM, else the first Chromium or Chrome on the machine."""
    candidates = [os.environ.get("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"]
    candidates += [shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome", "chrome")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"make lab exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer {url} within {timeout_s} s")


@pytest.fixture
def lab(tmp_path):
    """`make lab` on 127.0.0.1 with a random port and token, serving a copy of notebook 00; yields (url, folder)."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    # Without its committed outputs, so every output and figure the test finds was made by this run.
    notebook = json.loads((ROOT / "notebooks" / NOTEBOOK).read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    (folder / NOTEBOOK).write_text(json.dumps(notebook, indent=1))
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data"),  # the kernel spec make lab registers goes here
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),  # none of the user's own lab settings
        "IPYTHONDIR": str(ROOT / "tests" / "ipython"),  # kernels may reach loopback only
        "COURSE_SMOKE": "1",
        "TQDM_DISABLE": "1",
    }
    args = f"--no-browser --ip=127.0.0.1 --ServerApp.port_retries=0 --IdentityProvider.token={token}"
    log = (tmp_path / "lab.log").open("w")
    process = subprocess.Popen(
        ["make", "--no-print-directory", "lab", f"LAB_DIR={folder}", f"LAB_PORT={port}", f"LAB_ARGS={args}"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", process)
        yield f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}?token={token}", folder
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # make, jupyter and its kernels: the group this test started
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
        print((tmp_path / "lab.log").read_text()[-3000:])


def test_notebook_00_runs_in_the_course_kernel_through_the_ui(lab):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium on this machine: apt-get install -y chromium (or set CHROMIUM=/path/to/chrome)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in requirements.txt; make setup")
    url, folder = lab
    shots = ROOT / "runs" / "browser" / datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    shots.mkdir(parents=True)
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(folder.parent / "chromium-profile"),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        page = context.pages[0] if context.pages else context.new_page()
        try:
            run_notebook_through_the_ui(page, url, shots)
        finally:
            page.screenshot(path=str(shots / "final.png"))
            context.close()
    saved = json.loads((folder / NOTEBOOK).read_text())
    code = [cell for cell in saved["cells"] if cell["cell_type"] == "code"]
    errors = [o for cell in code for o in cell["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{errors[0]['ename']}: {errors[0]['evalue']}"
    assert all(cell["execution_count"] for cell in code), "every code cell ran"
    assert saved["metadata"]["kernelspec"]["display_name"] == COURSE_KERNEL_DISPLAY
    figures = sum("image/png" in o.get("data", {}) for cell in code for o in cell["outputs"])
    assert figures >= 4, f"notebook 00 draws at least 4 figures; the saved run has {figures}"


def run_notebook_through_the_ui(page, url: str, shots: Path) -> None:
    """Open the notebook (no pop-up may ask anything), switch to the course kernel, Run > Run All Cells, wait
    for the last cell, check that every figure decoded into pixels, and save with Ctrl+S."""
    page.goto(url)
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=120_000)
    kernel_button = page.locator(".jp-NotebookPanel-toolbar .jp-KernelName")
    kernel_button.filter(has_text="Python 3").wait_for(timeout=120_000)
    page.wait_for_timeout(2000)  # time for a first-run pop-up to show, if the settings override failed
    page.screenshot(path=str(shots / "opened.png"))
    assert page.locator(".jp-Dialog").count() == 0, "a dialog opened with the notebook (kernel picker?)"
    toasts = " ".join(page.locator(".Toastify__toast").all_inner_texts())
    assert "news" not in toasts.lower(), f"first-run notification shown: {toasts}"

    kernel_button.click()
    dialog = page.locator(".jp-Dialog")
    dialog.locator("select").select_option(label=COURSE_KERNEL_DISPLAY)
    dialog.locator("button", has_text="Select").click()
    kernel_button.filter(has_text=COURSE_KERNEL_DISPLAY).wait_for(timeout=60_000)

    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    # Prompts read "[ ]:" before a run and "[*]:" while queued or running; textContent, not innerText, because
    # JupyterLab skips rendering cells outside the view (content-visibility), which empties their innerText.
    prompts = page.locator(".jp-CodeCell .jp-InputPrompt")
    last = prompts.last
    deadline = time.monotonic() + RUN_ALL_TIMEOUT_S
    while time.monotonic() < deadline:
        texts = [text.strip() for text in prompts.all_text_contents()]
        if texts and all(re.fullmatch(r"\[\d+\]:", text) for text in texts):
            break
        if page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] .ansi-red-fg").count():
            break  # a traceback: stop waiting, the saved notebook names it
        page.wait_for_timeout(1000)
    else:
        raise TimeoutError(f"Run All did not finish in {RUN_ALL_TIMEOUT_S} s; prompts: {texts}")
    last.scroll_into_view_if_needed()

    images = page.locator(".jp-OutputArea-output img")
    assert images.count() >= 4, f"{images.count()} figures in the page"
    for index in range(images.count()):
        image = images.nth(index)
        image.scroll_into_view_if_needed()
        width = image.evaluate("img => img.complete ? img.naturalWidth : 0")
        assert width > 0, f"figure {index} did not render"
        if index == 0:
            page.screenshot(path=str(shots / "figure.png"))
    page.locator(".jp-NotebookPanel .jp-Notebook").click()
    page.keyboard.press("Control+s")
    page.wait_for_timeout(2000)
    assert page.locator(".jp-mod-dirty").count() == 0, "the notebook did not save"
