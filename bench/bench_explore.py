"""Representation explorer benchmark (issue 5): retrieval quality per source, dense-embedding time, click latency.

(a) ``alice eval retrieval`` on the sample cohort (held-out pseudo-subjects, exact truth): MRE, median, max and
    within 5/10/20 mm for Alice, SAM and the untrained network, plus the cycle errors on the real patients and the
    re-tiling errors (the source scan's landmarks in the same scan cropped by a few voxels);
(b) dense-embedding seconds per case for each source, from an empty cache;
(c) the Landmark retrieval page's server time per click with cached embeddings (AppTest script runs, SAM and
    Alice, each alone), median over a sequence of clicks at different voxels;
(d) Alice's landmark and re-tiling errors and embedding seconds for other numbers of tilings (``--tilings``) and
    other sets of voxel sizes (``--spacings``), each beside the defaults of (a), with the landmark errors on the
    training pseudo-subjects too (validation: where such settings are chosen).

Run: ``python bench/bench_explore.py [--tilings 1 12] [--spacings 2 2,6]`` (writes its section of bench/RESULTS.md
and prints JSON). ``ALICE_WORKSPACE`` names the workspace whose caches it may reuse (default: a new empty one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, machine, now, write_section  # noqa: E402  (bench/ is not a package)

HEADING = "## Representation explorer (issue 5)"
SOURCES = ("alice", "sam", "untrained")
EMBED_CASE = "lidc0001"
VALIDATION_SPLIT = "train"  # pseudo01-04: the training pseudo-subjects, with the same exact truth as the held-out


def retrieval_quality() -> dict:
    from alice import paths
    from alice.explore.evaluate import run_retrieval_evaluation

    return run_retrieval_evaluation(paths.SAMPLE_MANIFEST)


def embedding_seconds() -> dict[str, float]:
    """Seconds to embed one case from an empty dense cache (SAM's own whole-case cache already filled)."""
    from alice.data.cohort import sample_cohort
    from alice.explore.dense import EmbeddingSettings, embed_case, load_network
    from alice.data.cohort import load_case

    case = load_case(sample_cohort().get(EMBED_CASE))
    out = {}
    for name in SOURCES:
        settings = EmbeddingSettings(source=name).resolved()
        network = None if name == "sam" else load_network(settings)
        started = time.perf_counter()
        embed_case(case, settings, network)
        out[name] = round(time.perf_counter() - started, 2)
    return out


def overall(landmarks: dict) -> dict:
    """A method's landmark metrics without the per-structure breakdown."""
    return {k: v for k, v in landmarks.items() if k != "per_structure"}


def landmark_errors(settings, tasks) -> dict:
    """One source's landmark errors (without the per-structure breakdown) on ``tasks``."""
    from alice.anatomy.evaluate import evaluate_landmarks
    from alice.explore.evaluate import retrieval_method

    return overall(evaluate_landmarks({"m": retrieval_method(settings)}, tasks)["methods"]["m"])


def variant_sweep(variants: dict[str, dict], tasks, validation_tasks) -> dict[str, dict]:
    """Alice (shipped checkpoint) with other embedding settings (name -> settings changed): landmark errors on the
    held-out ``tasks`` and on the ``validation_tasks``, re-tiling errors and seconds to embed one case."""
    from alice.anatomy.evaluate import radial_error_metrics
    from alice.explore.dense import EmbeddingSettings, embed_case, load_network
    from alice.explore.evaluate import retiling_errors

    out = {}
    for name, changes in variants.items():
        settings = EmbeddingSettings(source="alice", **changes).resolved()
        landmarks = landmark_errors(settings, tasks)
        started = time.perf_counter()
        embed_case(tasks[0].query, settings, load_network(settings))
        seconds = round(time.perf_counter() - started, 2)
        out[name] = {"landmarks": landmarks, "validation": landmark_errors(settings, validation_tasks),
                     "retiling": radial_error_metrics(retiling_errors(settings, tasks[0].query)),
                     "embed_seconds": seconds}
    return out


def mm_list(spacings) -> str:
    """Voxel sizes as ``2, 6, 12``."""
    return ", ".join(f"{s:g}" for s in spacings)


def click_seconds(source: str, clicks: int) -> dict[str, float]:
    """Median and max AppTest run seconds after a click on the query view, embeddings and index cached."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=1200)
    at.run()
    at.switch_page("../pages/retrieval.py")
    at.session_state["retrieval.sources"] = [source]
    at.run()  # embeds and indexes the cohort once (not timed)
    times = []
    for n in range(clicks + 1):
        at.session_state["retrieval.query_view.chart.axial"] = {
            "selection": {"points": [{"x": 120.0 + 6 * n, "y": 110.0 + 3 * n}]}}
        started = time.perf_counter()
        at.run()
        if n:  # the first click warms the thumbnails of the page
            times.append(time.perf_counter() - started)
        if at.exception:
            raise RuntimeError(at.exception)
    return {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3), "clicks": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--tilings", type=int, nargs="*", default=[1], choices=[1, 8, 12],
                        help="numbers of tilings to compare Alice's errors at, (d) (default: %(default)s)")
    parser.add_argument("--spacings", nargs="*", default=["2"],
                        help="sets of voxel sizes (mm, comma-separated) to compare Alice's errors at, (d) "
                             "(default: %(default)s)")
    args = parser.parse_args()
    reused = os.environ.get("ALICE_WORKSPACE")
    os.environ.setdefault("ALICE_WORKSPACE", tempfile.mkdtemp(prefix="alice-bench-explore-"))
    from alice.anatomy.evaluate import landmark_tasks
    from alice.data.cohort import sample_cohort
    from alice.explore.dense import EmbeddingSettings
    from alice.explore.evaluate import retiling_shift

    started = now()
    quality = retrieval_quality()
    embed = embedding_seconds()
    clicks = {name: click_seconds(name, args.clicks) for name in ("sam", "alice")}
    # (a)'s and (b)'s Alice is the default; each variant changes one setting of it.
    default = quality["sources"]["alice"]
    variants = {f"{count} tiling{'s' * (count != 1)}, {mm_list(default['spacings_mm'])} mm": {"tilings": count}
                for count in args.tilings if count != default["tilings"]}
    for text in args.spacings:
        spacings = tuple(float(v) for v in text.split(","))
        if list(spacings) != default["spacings_mm"]:
            variants[f"{default['tilings']} tilings, {mm_list(spacings)} mm"] = {"spacings_mm": spacings}
    tasks, validation_tasks = (landmark_tasks(sample_cohort(), split=split) for split in ("test", VALIDATION_SPLIT))
    compared = {f"{default['tilings']} tilings, {mm_list(default['spacings_mm'])} mm (default)": {
        "landmarks": overall(quality["methods"]["alice"]),
        "validation": landmark_errors(EmbeddingSettings(source="alice").resolved(), validation_tasks),
        "retiling": quality["retiling"]["alice"], "embed_seconds": embed["alice"]},
        **variant_sweep(variants, tasks, validation_tasks)}
    sam_validation = landmark_errors(EmbeddingSettings(source="sam").resolved(), validation_tasks)
    result = {"date": started, "machine": machine(), "quality": quality, "embed_seconds": embed, "click": clicks,
              "variants": compared, "sam_validation": sam_validation}
    print(json.dumps(result))

    rows = ["| source | MRE (mm) | median | max | within 5 / 10 / 20 mm | n |", "|---|---|---|---|---|---|"]
    for name, m in quality["methods"].items():
        rows.append(f"| {name} | {m['mre_mm']:.2f} | {m['median_mm']:.2f} | {m['max_mm']:.2f} | "
                    f"{m['within_5mm']:.0%} / {m['within_10mm']:.0%} / {m['within_20mm']:.0%} | {m['n']} |")
    cycles = []
    for case, facts in quality["real_patients"].items():
        cycle = ", ".join(f"{name} {m['mre_mm']:.1f} (median {m['median_mm']:.1f})"
                          for name, m in facts["cycle_error"].items())
        cycles.append(f"- {case}: landmark error {facts['landmark_error']}; mean cycle error in mm: {cycle}")
    text = "\n".join([
        HEADING, "",
        f"Command: `{f'ALICE_WORKSPACE={reused} ' if reused else ''}"
        f"{' '.join(['python', 'bench/bench_explore.py', *sys.argv[1:]])}`; machine: {machine()}; "
        f"date: {started}.", "",
        f"(a) `alice eval retrieval` ({quality['source_case']} landmarks -> held-out "
        f"{', '.join(quality['key_cases'])}; dense embeddings every 6 mm, sub-lattice refinement):", "",
        *rows, "", "Settings of each source: " + "; ".join(
            f"{name}: " + ", ".join(f"{k} {v}" for k, v in settings.items() if k not in ("source", "checkpoint"))
            for name, settings in quality["sources"].items()) + ".", "",
        "Real patients (no shared labelled structure with the source scan):", "", *cycles, "",
        f"Re-tiling: {quality['source_case']}'s landmarks found in the same scan cropped by "
        f"{retiling_shift(quality)} voxels (the truth is the point itself; only "
        "where the windows fall changes), error in mm: " + ", ".join(
            f"{name} {m['mre_mm']:.1f} (median {m['median_mm']:.1f}, n {m['n']})"
            for name, m in quality["retiling"].items()) + ".", "",
        f"(b) Dense embedding of {EMBED_CASE} from an empty cache, seconds: "
        + ", ".join(f"{k} {v}" for k, v in embed.items()) + " (SAM reads its whole-case cache; Alice and untrained "
        "run the backbone window by window).", "",
        "(c) Landmark retrieval page, server time per click with cached embeddings and index (AppTest run, "
        "including the gallery thumbnails): "
        + "; ".join(f"{k}: median {v['median_s']} s, max {v['max_s']} s over {v['clicks']} clicks"
                    for k, v in clicks.items()) + " (goal <= 1.5 s p50).", "",
        f"(d) Alice's dense embeddings with other settings: the number of tilings (the backbone run over the scan "
        f"that many times with the scan moved to evenly spread places within one window step, vectors averaged) "
        f"and the voxel sizes the backbone sees (one pass each, vectors joined); the default is (a) and (b). "
        f"Landmarks as in (a); validation: the same landmarks in the training pseudo-subjects "
        f"({', '.join(t.key.record.case_id for t in validation_tasks)}), where settings are chosen (SAM there: "
        f"{sam_validation['mre_mm']:.2f} mm, median {sam_validation['median_mm']:.2f}); re-tiling as above; "
        f"seconds to embed {EMBED_CASE}:", "",
        "| settings | MRE (mm) | median | max | within 5 / 10 / 20 mm | validation MRE (median) | "
        "re-tiling MRE (median) | embed (s) |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {name} | {t['landmarks']['mre_mm']:.2f} | {t['landmarks']['median_mm']:.2f} | "
          f"{t['landmarks']['max_mm']:.1f} | {t['landmarks']['within_5mm']:.0%} / "
          f"{t['landmarks']['within_10mm']:.0%} / {t['landmarks']['within_20mm']:.0%} | "
          f"{t['validation']['mre_mm']:.2f} ({t['validation']['median_mm']:.2f}) | "
          f"{t['retiling']['mre_mm']:.1f} ({t['retiling']['median_mm']:.1f}) | {t['embed_seconds']} |"
          for name, t in compared.items()), ""])
    write_section(HEADING, text)


if __name__ == "__main__":
    main()
