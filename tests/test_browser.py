"""What a person sees: JupyterLab in Debian's Chromium (Playwright), the quickstart run, the sweep panel driven.

Lab listens on 127.0.0.1 with a random token; HOME, XDG, IPython and Jupyter folders all live in the
test's tmp dir, and the notebook is a copy, so nothing outside tmp is written. The screenshots are
kept in the tmp dir (``sweep_panel.png``, ``lab.png``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_quickstart.ipynb"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"{CHROMIUM} not installed (apt-get install -y chromium)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def lab(tmp_path):
    """A JupyterLab server on a free loopback port, its root a tmp folder holding a copy of the quickstart."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    home = tmp_path / "home"
    env = dict(os.environ)
    for var, sub in [("HOME", "home"), ("XDG_CONFIG_HOME", "home/.config"), ("XDG_CACHE_HOME", "home/.cache"),
                     ("XDG_DATA_HOME", "home/.local/share"), ("XDG_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython"),
                     ("JUPYTER_CONFIG_DIR", "jupyter/config"), ("JUPYTER_DATA_DIR", "jupyter/data"),
                     ("JUPYTER_RUNTIME_DIR", "jupyter/runtime"), ("TMPDIR", "tmp")]:
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(tmp_path / sub)
    os.chmod(tmp_path / "runtime", 0o700)
    settings = tmp_path / "lab" / "settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false"})
    )
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--IdentityProvider.token={token}", "--allow-root", "--LabApp.extension_manager=readonly",
        "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--FileContentsManager.delete_to_trash=False", f"--ServerApp.root_dir={root}",
        f"--LabApp.workspaces_dir={tmp_path / 'lab' / 'workspaces'}", f"--LabApp.user_settings_dir={settings}",
    ]
    # Chromium puts a Unix socket under TMPDIR and aborts when the path exceeds ~107 bytes
    # ("Socket path too long"): pytest's tmp paths can be that long, so give it a short one.
    browser_tmp = tempfile.mkdtemp(prefix="wb-chromium-", dir="/tmp")
    log = open(tmp_path / "lab.log", "wb")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"url": url, "token": token, "env": env | {"TMPDIR": browser_tmp}, "home": home, "tmp": tmp_path}
    finally:
        shutil.rmtree(browser_tmp, ignore_errors=True)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_quickstart_and_sweep_panel_in_chromium(lab):
    from playwright.sync_api import expect, sync_playwright

    tmp = lab["tmp"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, env=lab["env"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.goto(f"{lab['url']}/lab/tree/{NOTEBOOK.name}?token={lab['token']}")
            first_cell = page.locator(".jp-Notebook .jp-Cell").first
            expect(first_cell).to_be_visible(timeout=60_000)
            expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(1, timeout=60_000)

            # Run All (click into a cell first: the menu command needs an active notebook)
            first_cell.click()
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator("[data-command='runmenu:run-all']").click()
            expect(page.locator(".jp-InputArea-prompt", has_text=re.compile(r"\[\d+\]:")).first).to_be_visible(timeout=60_000)

            # the panel cell ran, then panel.run() filled grid, table and status
            panel = page.locator(".widget-vbox", has=page.locator(".widget-button", has_text="Run sweep")).last
            expect(panel).to_be_visible(timeout=180_000)
            status = panel.locator(".widget-html-content", has_text=re.compile(r"\d+ ran, \d+ cached, \d+ failed"))
            expect(status).to_have_text("2 ran, 0 cached, 0 failed", timeout=180_000)

            # a person changes the X values and clicks Run: only the new cell runs, the rest is cached
            values = panel.locator("input[placeholder='e.g. 2,4,8 or 1-8 (+2)']").first
            values.fill("2,3,4")
            values.press("Enter")
            expect(panel.locator(".widget-html-content", has_text="3 cells (3)")).to_be_visible(timeout=60_000)
            panel.locator(".widget-button", has_text="Run sweep").click()
            expect(status).to_have_text("1 ran, 2 cached, 0 failed", timeout=120_000)

            grid = panel.locator("img.widget-image").first
            expect(grid).to_be_visible()
            width = grid.evaluate("img => img.complete ? img.naturalWidth : 0")
            assert width > 3 * 128  # three tiles of >= 128 px plus legends
            table = panel.locator("table.workbench-sweep-table")
            expect(table).to_be_visible()
            expect(table.locator("tbody tr")).to_have_count(3)
            expect(table).to_contain_text("sampler.steps")

            panel.scroll_into_view_if_needed()
            panel.screenshot(path=str(tmp / "sweep_panel.png"))
            page.screenshot(path=str(tmp / "lab.png"))
        except Exception as err:  # keep what the browser showed and what Lab logged, for the report
            try:
                page.screenshot(path=str(tmp / "failure.png"))
            except Exception:
                pass
            log = (tmp / "lab.log").read_text(errors="replace")[-4000:]
            raise AssertionError(f"{err}\n--- screenshot: {tmp / 'failure.png'}\n--- lab.log (tail):\n{log}") from err
        finally:
            browser.close()
    assert (tmp / "sweep_panel.png").stat().st_size > 10_000
