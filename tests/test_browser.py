"""What a person sees: JupyterLab in Debian's Chromium (Playwright), the quickstart run, the panels driven.

Lab listens on 127.0.0.1 with a random token; HOME, XDG, IPython and Jupyter folders all live in the
test's tmp dir, and the notebooks are copies (or written by the test), so nothing outside tmp is written.
Screenshots of each state are kept in the tmp dir for review (``sweep_panel.png``, ``lab.png``,
``panels-*.png``); they are not compared.
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


PANELS_NOTEBOOK = "panels.ipynb"
PANEL_CELLS = [
    # a sweep long enough to be stopped by a click: 6 cells of 150-155 steps at 128x128 (~1-2 s each here)
    "from workbench.widgets import SweepPanel, TemplatePanel\n"
    "panel = SweepPanel(axes=[('sampler.steps', '2,3')], base=['model=tiny', 'height=64', 'width=64'], out_dir='sweep')\n"
    "panel",
    "TemplatePanel('qwen_t2i', prompt='a red fox')",
]


def _write_panels_notebook(root: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in PANEL_CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(root / PANELS_NOTEBOOK))


@pytest.fixture()
def lab(tmp_path):
    """A JupyterLab server on a free loopback port, its root a tmp folder holding a copy of the quickstart
    and the panels notebook."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    _write_panels_notebook(root)
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


def _failure(page, tmp: Path, err: Exception) -> AssertionError:
    """The error with what the browser showed (failure.png) and what Lab logged, for the report."""
    try:
        page.screenshot(path=str(tmp / "failure.png"))
    except Exception:
        pass
    log = (tmp / "lab.log").read_text(errors="replace")[-4000:]
    return AssertionError(f"{err}\n--- screenshot: {tmp / 'failure.png'}\n--- lab.log (tail):\n{log}")


def _open_and_run_all(page, url: str) -> None:
    """Open a notebook and Run All, until a cell has run. On a loaded machine Lab may ask which kernel to
    start (its dialog takes the click) or take the first menu click before the notebook is active:
    accept the preferred kernel, and click Run All again while no cell has started."""
    from playwright.sync_api import expect

    page.goto(url)
    first_cell = page.locator(".jp-Notebook .jp-Cell").first
    expect(first_cell).to_be_visible(timeout=60_000)
    ran = page.locator(".jp-InputArea-prompt", has_text=re.compile(r"\[(\d+|\*)\]:")).first
    for _ in range(4):
        dialog = page.locator(".jp-Dialog")
        if dialog.count():
            dialog.locator("button.jp-mod-accept").click()
        expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(1, timeout=90_000)
        first_cell.click()  # the menu command needs an active notebook
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator("[data-command='runmenu:run-all']").click()
        try:
            expect(ran).to_be_visible(timeout=30_000)
            return
        except AssertionError:
            continue
    expect(ran).to_be_visible(timeout=1_000)  # fails with Playwright's own report


def test_quickstart_and_sweep_panel_in_chromium(lab):
    from playwright.sync_api import expect, sync_playwright

    tmp = lab["tmp"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, env=lab["env"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            _open_and_run_all(page, f"{lab['url']}/lab/tree/{NOTEBOOK.name}?token={lab['token']}")

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

            grid = panel.locator(".wb-grid img")
            expect(grid).to_be_visible()
            width = grid.evaluate("img => img.complete ? img.naturalWidth : 0")
            assert width > 3 * 128  # three tiles of >= 128 px plus legends
            panel.locator(".lm-TabBar-tab", has_text="Table").click()
            table = panel.locator("table.workbench-sweep-table")
            expect(table).to_be_visible()
            expect(table.locator("tbody tr")).to_have_count(3)
            expect(table).to_contain_text("sampler.steps")

            panel.scroll_into_view_if_needed()
            panel.screenshot(path=str(tmp / "sweep_panel.png"))
            page.screenshot(path=str(tmp / "lab.png"))
        except Exception as err:  # keep what the browser showed and what Lab logged, for the report
            raise _failure(page, tmp, err) from err
        finally:
            browser.close()
    assert (tmp / "sweep_panel.png").stat().st_size > 10_000


def _shot(page, tmp: Path, name: str, locator=None) -> None:
    (locator or page).screenshot(path=str(tmp / f"panels-{name}.png"))


def _find_tile(page, image, label_prefix: str) -> tuple[float, float]:
    """Move the mouse along the grid until the hover title names the wanted cell; that point is on its tile."""
    box = image.bounding_box()
    for fy in (0.5, 0.35, 0.65):
        for i in range(1, 60):
            x, y = box["x"] + box["width"] * i / 60, box["y"] + box["height"] * fy
            page.mouse.move(x, y)
            if (image.get_attribute("title") or "").startswith(label_prefix):
                return x, y
    raise AssertionError(f"no tile titled {label_prefix!r} under the mouse")


def test_panels_in_chromium_stop_resume_tiles_table_compare_template_reopen(lab):
    """The researcher's path through the panels: run, Stop mid-sweep, resume, click a tile and copy its
    overrides, sort the styled table, A/B with a difference map, a base-override typo named as such,
    the template drop marker kept at 34, and the static copy still shown after the kernel is gone."""
    from playwright.sync_api import expect, sync_playwright

    tmp = lab["tmp"]
    url = f"{lab['url']}/lab/tree/{PANELS_NOTEBOOK}?token={lab['token']}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, env=lab["env"])
        context = browser.new_context(viewport={"width": 1400, "height": 1600})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=lab["url"])
        page = context.new_page()
        try:
            _open_and_run_all(page, url)

            panel = page.locator(".widget-vbox", has=page.locator(".widget-button", has_text="Run sweep")).last
            expect(panel).to_be_visible(timeout=120_000)
            expect(page.locator(".workbench-static-copy")).to_contain_text("copied here when it finishes")
            status = panel.locator(".widget-html-content", has_text=re.compile(r"(ran|stopp|running|Error)")).first

            # 1. run (the button runs in a background thread; the status fills in when it is done)
            panel.locator(".widget-button", has_text="Run sweep").click()
            expect(status).to_have_text("2 ran, 0 cached, 0 failed", timeout=120_000)
            grid = panel.locator(".wb-grid img")
            expect(grid).to_be_visible()
            _shot(page, tmp, "1-run", panel)

            # 2. a long sweep, stopped by a click mid-way, then resumed by Run
            base = panel.locator("textarea[placeholder='one override per line']")
            base.fill("model=tiny\nheight=128\nwidth=128")
            base.blur()
            values = panel.locator("input[placeholder='e.g. 2,4,8 or 1-8 (+2)']").first
            values.fill("150,151,152,153,154,155")
            values.press("Enter")
            expect(panel.locator(".widget-html-content", has_text="6 cells (6)")).to_be_visible(timeout=60_000)
            panel.locator(".widget-button", has_text="Run sweep").click()
            expect(panel.locator(".widget-html-content", has_text=re.compile(r"^1 / 6 cells"))).to_be_visible(timeout=120_000)
            expect(panel.locator(".widget-html-content", has_text=re.compile(r"cell \d+: .*\(denoise \d+/15\d\)"))).to_be_visible()
            _shot(page, tmp, "2-running", panel)
            panel.locator(".widget-button", has_text="Stop").click()
            expect(status).to_contain_text("stopped:", timeout=60_000)
            text = status.inner_text()
            done = int(re.search(r"(\d+) ran", text).group(1))
            assert 1 <= done < 6, text
            _shot(page, tmp, "3-stopped", panel)
            panel.locator(".widget-button", has_text="Run sweep").click()
            expect(status).to_have_text(re.compile(rf"^{6 - done} ran, {done} cached, 0 failed$"), timeout=240_000)
            _shot(page, tmp, "4-resumed", panel)

            # 3. click a tile: its image, overrides and record; copy the overrides
            x, y = _find_tile(page, grid, "cell 2:")
            page.mouse.click(x, y)
            overrides = panel.locator(".widget-text", has_text="overrides").locator("input")
            expect(overrides).to_have_value(re.compile(r"sampler\.steps=152"))
            expect(panel.locator(".widget-html-content", has_text="record.json")).to_be_visible()
            panel.locator("button.wb-copy").click()
            expect(panel.locator("button.wb-copy")).to_have_text("copied")
            assert page.evaluate("navigator.clipboard.readText()") == overrides.input_value()
            _shot(page, tmp, "5-tile", panel)

            # 4. the styled table, sorted by a click on a header
            panel.locator(".lm-TabBar-tab", has_text="Table").click()
            table = panel.locator("table.workbench-sweep-table")
            expect(table).to_be_visible()
            expect(table.locator("tbody tr")).to_have_count(6)
            header = table.locator("thead tr").first.locator("th", has_text="total (s)")
            header.click()
            header.click()  # descending: the longest cell first
            col = header.evaluate("th => Array.from(th.parentNode.children).indexOf(th)")
            totals = [float(t) for t in table.locator("tbody tr").evaluate_all(
                f"rows => rows.map(r => r.children[{col}].textContent.trim())") if t]
            assert len(totals) == 6 and totals == sorted(totals, reverse=True), totals
            expect(panel.locator("img.wb-charts")).to_be_visible()
            _shot(page, tmp, "6-table", panel)

            # 5. A/B with a difference map and its numbers
            panel.locator(".lm-TabBar-tab", has_text="A/B compare").click()
            expect(panel.locator(".widget-html-content", has_text="PSNR")).to_be_visible()
            expect(panel.locator("img.wb-compare")).to_be_visible()  # the difference map
            _shot(page, tmp, "7-compare", panel)

            # 6. a typo in the base overrides is blamed on the base, not on an axis value
            base.fill("model=tiny\nwidht=64")
            base.blur()
            expect(panel.locator(".widget-html-content", has_text="base overrides")).to_contain_text("widht")
            _shot(page, tmp, "8-base-typo", panel)

            # 7. the template panel: clicking into the drop marker and typing keeps 34 dropped
            template = page.locator(".widget-vbox", has=page.locator(".widget-text", has_text="drop until")).last
            marker = template.locator(".widget-text", has_text="drop until").locator("input")
            expect(template).to_contain_text("34 dropped")
            marker.click()
            marker.press("End")
            marker.type("x")
            expect(template).not_to_contain_text("34 dropped")
            marker.press("Backspace")
            marker.press("Enter")
            expect(template).to_contain_text("34 dropped")
            _shot(page, tmp, "9-template", template)

            # 8. save, shut the kernel down, reopen: the static copy of the last grid and table is still there
            page.locator("jp-button[data-command='docmanager:save']").click()  # a focused widget input eats Ctrl+S
            expect(page.locator(".jp-mod-dirty")).to_have_count(0, timeout=30_000)
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Kernel$")).click()
            page.locator("[data-command='kernelmenu:shutdown']").click()
            dialog = page.locator(".jp-Dialog")
            if dialog.count():
                dialog.locator("button", has_text=re.compile("Shut Down")).click()
            page.reload()
            copy = page.locator(".workbench-static-copy")
            expect(copy.locator("img")).to_be_visible(timeout=60_000)
            expect(copy.locator("table")).to_contain_text("sampler.steps")
            _shot(page, tmp, "10-reopened")
        except Exception as err:
            raise _failure(page, tmp, err) from err
        finally:
            browser.close()
    for name in ("1-run", "3-stopped", "5-tile", "6-table", "10-reopened"):
        assert (tmp / f"panels-{name}.png").stat().st_size > 5_000
