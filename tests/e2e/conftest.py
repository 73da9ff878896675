"""A real ``streamlit run app/main.py`` server on a free port, and a headless Chromium driven by Playwright."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from alice import paths

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = paths.REPO_ROOT / "test-artifacts"
START_TIMEOUT_S = 60


def missing(reason: str):
    """Fail in CI (the browser test must run there), skip on a developer machine without a browser."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def streamlit_command() -> list[str]:
    """The ``streamlit`` script of this interpreter (not ``python -m``, which would put the repo on sys.path and
    hide a missing editable install)."""
    script = Path(sys.executable).parent / "streamlit"
    return [str(script if script.exists() else shutil.which("streamlit") or "streamlit")]


def health(url: str) -> str:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return ""


def tiny_sam(folder: Path) -> Path:
    """An untrained SAM of a few thousand weights, so the browser tests never wait for (or need) the real one."""
    import torch

    from alice.anatomy.model import build_sam, save_sam
    from tests.anatomy.conftest import tiny_config

    torch.manual_seed(0)
    config = tiny_config()
    return save_sam(folder / "tiny_sam.pt", build_sam(config), config, step=0)


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """Start the app from the repo root (so ``.streamlit/config.toml`` applies), with a tiny SAM checkpoint; yield
    its URL; stop it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    workspace = tmp_path_factory.mktemp("e2e-workspace")
    log_path = workspace / "streamlit.log"
    # No Alice checkpoint: the explorer pages fall back to SAM instead of embedding the cohort with Alice (minutes).
    env = {**os.environ, "ALICE_WORKSPACE": str(workspace), "ALICE_SAM_CHECKPOINT": str(tiny_sam(workspace)),
           "ALICE_PRETRAINED_CHECKPOINT": str(workspace / "no-alice-checkpoint.pt")}
    env.pop("PYTHONPATH", None)
    command = [*streamlit_command(), "run", "app/main.py", "--server.headless", "true",
               "--server.address", "127.0.0.1", "--server.port", str(port)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=paths.REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while health(url) != "ok":
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not become healthy on {url}:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        # Ours answers: it is alive (a taken port makes streamlit exit) and reports this port in its log.
        assert process.poll() is None and f":{port}" in log_path.read_text(), log_path.read_text()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def browser_page():
    """A Chromium page (1500x1100); skipped or failed (under CI) when Playwright or Chromium is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install playwright; never `playwright install`)")
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1500, "height": 1100})
        finally:
            browser.close()


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot under ``test-artifacts/``."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
