"""Benchmark the app: cold start, server time per viewer rerun, and loading a case; results go to RESULTS.md.

Run from the repository root: ``python bench/bench_app.py`` (add ``--no-browser`` without Chromium).
Every number in the written section is measured by this script.

(a) cold start: ``streamlit run app/main.py`` to a healthy ``/_stcore/health``, and to the viewer page rendered
    in headless Chromium (readout and three views drawn; the browser is started beforehand and not counted).
(b) server time per viewer rerun with AppTest (the script run, without network or browser drawing): a slice step
    (slider) and a crosshair click (injected selection); median after warm-up.
(c) ``load_case`` of a sample case in a fresh process (imports not counted).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, now, write_section  # noqa: E402  (bench/ is not a package)

SECTION = "## App: cold start, viewer reruns, case loading (bench/bench_app.py)"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
GOAL_RERUN_S = 0.3
GOAL_COLD_START_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as response:
            return response.read() == b"ok"
    except OSError:
        return False


def cold_start(runs: int, browser: bool, workspace: Path) -> list[tuple[float, float | None]]:
    """(seconds to healthy, seconds to the viewer rendered or None) per fresh server."""
    streamlit = Path(sys.executable).parent / "streamlit"
    env = {**os.environ, "ALICE_WORKSPACE": str(workspace)}
    results = []
    playwright = chromium = None
    if browser:
        from playwright.sync_api import sync_playwright

        playwright = sync_playwright().start()
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        for _ in range(runs):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            page = chromium.new_page(viewport={"width": 1500, "height": 1100}) if chromium else None
            start = time.perf_counter()
            process = subprocess.Popen([str(streamlit), "run", "app/main.py", "--server.headless", "true",
                                        "--server.address", "127.0.0.1", "--server.port", str(port)],
                                       cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                while not healthy(url):
                    if process.poll() is not None or time.perf_counter() - start > 120:
                        raise RuntimeError("streamlit did not start")
                    time.sleep(0.05)
                to_health = time.perf_counter() - start
                to_viewer = None
                if page is not None:
                    page.goto(f"{url}/viewer")
                    page.wait_for_selector(".st-key-viewer-readout p", timeout=120_000)
                    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .nsewdrag').length === 3",
                                           timeout=120_000)
                    to_viewer = time.perf_counter() - start
                    page.close()
                results.append((to_health, to_viewer))
            finally:
                process.terminate()
                process.wait(timeout=20)
    finally:
        if chromium:
            chromium.close()
            playwright.stop()
    return results


def rerun_times(cohort: str, case_id: str, reruns: int, warmup: int) -> dict[str, float]:
    """Median AppTest ``run()`` seconds for a slice step and for a click, on one case."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=120)
    at.run()
    at.switch_page("../pages/viewer.py")
    at.run()
    at.selectbox(key="viewer_page.cohort").set_value(cohort).run()
    at.selectbox(key="viewer_page.case").set_value(case_id).run()
    if at.exception or at.error:
        raise RuntimeError(f"viewer failed: {at.exception} {[e.value for e in at.error]}")

    steps = []
    for n in range(warmup + reruns):
        slider = at.slider(key="viewer.slice.axial")
        target = slider.value + 1 if slider.value + 1 <= slider.max else slider.min
        start = time.perf_counter()
        slider.set_value(target).run()
        steps.append(time.perf_counter() - start)
    clicks = []
    for n in range(warmup + reruns):
        # Different points each time, so each click moves the crosshair and redraws the other two views.
        at.session_state["viewer.chart.coronal"] = {"selection": {"points": [{"x": 60.0 + 3 * n, "y": 80.0 + n}]}}
        start = time.perf_counter()
        at.run()
        clicks.append(time.perf_counter() - start)
    if at.exception:
        raise RuntimeError(str(at.exception))
    return {"slice step": statistics.median(steps[warmup:]), "click": statistics.median(clicks[warmup:]),
            "slice step max": max(steps[warmup:]), "click max": max(clicks[warmup:])}


LOAD_SCRIPT = """
import sys, time
from alice.data.cohort import load_case, sample_cohort
record = sample_cohort().get(sys.argv[1])
start = time.perf_counter()
load_case(record)
print(time.perf_counter() - start)
"""


def load_case_cold(case_id: str, runs: int) -> list[float]:
    """Seconds for ``load_case`` in fresh processes."""
    return [float(subprocess.run([sys.executable, "-c", LOAD_SCRIPT, case_id], cwd=REPO, check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1])
            for _ in range(runs)]


def add_large_case(workspace: Path) -> str:
    """A native-resolution case (512 x 512 x 133 voxels of 0.7 x 0.7 x 2.5 mm) resampled from lidc0001."""
    import numpy as np
    from scipy import ndimage

    from alice.data.cohort import add_user_case, load_case, sample_cohort
    from alice.data.io import Volume, save_volume

    case = load_case(sample_cohort().get("lidc0001"))
    zoom = [n / s for n, s in zip((512, 512, 133), case.image.shape)]
    affine = case.image.affine.copy()
    affine[:3, :3] = affine[:3, :3] / np.array(zoom)
    image = Volume(ndimage.zoom(case.image.array, zoom, order=1), affine)
    label = Volume(ndimage.zoom(case.label.array, zoom, order=0), affine)
    image_path = save_volume(image, workspace / "large" / "large.nii.gz")
    label_path = save_volume(label, workspace / "large" / "large_label.nii.gz")
    return add_user_case(image_path, label_path, "large", case.record.label_names).case_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium part of the cold start")
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--reruns", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        os.environ["ALICE_WORKSPACE"] = str(workspace)
        sys.path.insert(0, str(REPO))
        from alice.data.cohort import sample_cohort

        cohort = sample_cohort()
        first = cohort.cases[0]
        starts = cold_start(args.cold_runs, not args.no_browser, workspace)
        reruns = {first.case_id: rerun_times("sample", first.case_id, args.reruns, args.warmup)}
        large = add_large_case(workspace)
        reruns[large] = rerun_times("user", large, args.reruns, args.warmup)
        loads = load_case_cold(first.case_id, 3)

    health = statistics.median(s[0] for s in starts)
    viewer = [s[1] for s in starts if s[1] is not None]
    step = reruns[first.case_id]["slice step"]
    shapes = {first.case_id: "x".join(map(str, first.shape)), large: "512x512x133"}

    def joined(values) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    rows = [(f"cold start to healthy `/_stcore/health` (median of {len(starts)})",
             f"{health:.2f} s ({joined(s[0] for s in starts)})")]
    if viewer:
        rows.append((f"cold start to the viewer page rendered in Chromium (median of {len(viewer)})",
                     f"{statistics.median(viewer):.2f} s ({joined(viewer)})"))
    for case_id, times in reruns.items():
        for kind, name in (("slice step", "slice step"), ("click", "crosshair click")):
            rows.append((f"viewer rerun, {name}, {case_id} ({shapes[case_id]} voxels): median / max of {args.reruns}",
                         f"{times[kind]:.3f} s / {times[kind + ' max']:.3f} s"))
    rows.append((f"`load_case({first.case_id})` in a fresh process (3 runs)", f"{joined(loads)} s"))

    cold_ok = max([health, *viewer]) < GOAL_COLD_START_S
    goals = (f"Goals on 2 cores: slice step < {GOAL_RERUN_S} s server time: "
             f"{'met' if step < GOAL_RERUN_S else 'MISSED'} ({step:.3f} s); cold start < {GOAL_COLD_START_S:.0f} s: "
             f"{'met' if cold_ok else 'MISSED'}.")
    note = ("Rerun times are AppTest script runs (the server side: slicing, windowing, PNG encoding, figure building "
            "and serialisation), not the browser's drawing or the network.")
    lines = [SECTION, "",
             f"- Command: `python bench/bench_app.py{' --no-browser' if args.no_browser else ''}`",
             f"- Date: {now()}",
             f"- Machine: {machine()}",
             "", "| measure | result |", "|---|---|",
             *(f"| {measure} | {result} |" for measure, result in rows),
             "", goals, note, ""]
    text = "\n".join(lines)
    write_section(SECTION, text)
    print(text)


if __name__ == "__main__":
    main()
