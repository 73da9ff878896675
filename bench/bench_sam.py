"""Benchmark SAM: landmark-retrieval quality, embedding and matching speed, training step time; into RESULTS.md.

Run from the repository root: ``python bench/bench_sam.py`` (``--checkpoint`` defaults to the shipped one).
Every number in the written section is measured by this script (the training wall time is read from the
checkpoint's run metrics, which the training command wrote step by step).

- quality: ``alice eval landmarks`` (lidc0001 landmarks in the held-out pseudo-subjects): SAM, untrained, NCC;
- embedding a whole case (no cache), with ``torch`` on the machine's cores;
- one match with cached embeddings (a single query point), median over many points;
- one training step of the ``cpu`` preset (median after warm-up), and the shipped checkpoint's training time;
- on a GPU, when there is one: embedding throughput (cases/s) and training step time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, now, write_section  # noqa: E402  (bench/ is not a package)

SECTION = "## SAM: landmark retrieval, embedding, matching, training (bench/bench_sam.py)"
GOALS = {"mre_mm": 10.0, "embed_s": 10.0, "match_s": 0.2, "train_min": 30.0}


def timed(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch

    from alice import paths
    from alice.anatomy.cache import cached_embedding, embed_case
    from alice.anatomy.evaluate import run_landmark_evaluation
    from alice.anatomy.match import match_points
    from alice.anatomy.model import PRESETS, load_sam
    from alice.anatomy.train import build_optimizer, build_sam_loss, make_batch, prepare_scan
    from alice.anatomy.grid import grid_affine
    from alice.anatomy.model import build_sam
    from alice.data.cohort import load_case, sample_cohort
    from alice.data.io import load_volume

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=paths.DEFAULT_SAM_CHECKPOINT)
    parser.add_argument("--steps", type=int, default=30, help="training steps timed (after 5 warm-up)")
    args = parser.parse_args()

    cohort = sample_cohort()
    rows = []
    with tempfile.TemporaryDirectory() as workspace:
        import os

        os.environ["ALICE_WORKSPACE"] = workspace  # a cold embedding cache
        quality = run_landmark_evaluation(paths.SAMPLE_MANIFEST, args.checkpoint)
        model = load_sam(args.checkpoint).model
        for case_id in ("lidc0001", "pseudo02"):
            image = load_case(cohort.get(case_id)).image
            seconds = timed(lambda: embed_case(model, image), repeats=3)
            rows.append((f"embed a whole case, {case_id} ({'x'.join(map(str, image.shape))} voxels at 2 mm), "
                         f"median of 3", f"{statistics.median(seconds):.2f} s"))
        query = cached_embedding(args.checkpoint, cohort.get("lidc0001"))
        key = cached_embedding(args.checkpoint, cohort.get("pseudo05"))
        rng = np.random.default_rng(0)
        points = query.local_xyz_mm[rng.choice(np.flatnonzero(query.local_in_body.numpy()), 200)]
        match_points(query, key, points[:1])  # first call pays one-off set-up
        seconds = []
        for point in points:
            start = time.perf_counter()
            match_points(query, key, point[None])
            seconds.append(time.perf_counter() - start)
        rows.append(("one match with cached embeddings (one query point), median / p95 of 200",
                     f"{statistics.median(seconds) * 1000:.1f} ms / {np.percentile(seconds, 95) * 1000:.1f} ms"))
        seconds = timed(lambda: match_points(query, key, points[:89]), repeats=5)
        rows.append(("89 points matched at once (one landmark set), median of 5", f"{statistics.median(seconds):.3f} s"))

    config = PRESETS["cpu"]
    scans = [prepare_scan(load_volume(r.image), config.model.spacing_mm) for r in cohort.split("train")]
    step_s = train_step_seconds(config, scans, args.steps, torch.device("cpu"), build_sam, build_sam_loss,
                                build_optimizer, make_batch, grid_affine)
    crop = "x".join(map(str, config.train.crop_shape))
    rows.append((f"training step, `cpu` preset, 2 views x {config.train.volumes_per_batch} scans of {crop} at "
                 f"{config.model.spacing_mm:g} mm: median of {args.steps}",
                 f"{step_s:.3f} s"))
    run_metrics = args.checkpoint.with_suffix(".metrics.jsonl")
    train_minutes = None
    if run_metrics.exists():
        records = [json.loads(line) for line in run_metrics.read_text().splitlines()]
        train_minutes = sum(r["seconds"] for r in records) / 60
        rows.append((f"training the shipped checkpoint: {len(records)} steps (sum of step times in "
                     f"`{run_metrics.relative_to(REPO)}`)", f"{train_minutes:.1f} min"))
        median_step = statistics.median(r["seconds"] for r in records)
        rows.append(("the same run: median step time x steps (what it costs without other jobs on the machine)",
                     f"{median_step:.3f} s x {len(records)} = {median_step * len(records) / 60:.1f} min"))

    gpu_rows = gpu_figures(args.checkpoint, cohort, embed_case, load_sam, load_case, config, scans, build_sam,
                           build_sam_loss, build_optimizer, make_batch, grid_affine)
    write(args, quality, rows, gpu_rows, train_minutes)


def train_step_seconds(config, scans, steps, device, build_sam, build_sam_loss, build_optimizer, make_batch,
                       grid_affine) -> float:
    """Median seconds of one full training step (batch, forward, loss, backward, optimiser)."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    model = build_sam(config).to(device).train()
    loss_fn = build_sam_loss(config.train)
    optimizer = build_optimizer(model, config.train)
    times = []
    for step in range(steps + 5):
        start = time.perf_counter()
        batch = make_batch(scans, config, rng)
        out = model(batch.images.to(device))
        losses = loss_fn(out["local"].cpu() if device.type != "cpu" else out["local"],
                         out["global"].cpu() if device.type != "cpu" else out["global"],
                         np.stack([grid_affine(a, model.local_stride) for a in batch.affines]),
                         np.stack([grid_affine(a, model.global_stride) for a in batch.affines]), generator)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 5:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def gpu_figures(checkpoint, cohort, embed_case, load_sam, load_case, config, scans, *train_parts) -> list[tuple]:
    import torch

    if not torch.cuda.is_available():
        return []
    device = torch.device("cuda")
    model = load_sam(checkpoint).model.to(device)
    images = [load_case(r).image for r in cohort.cases]
    embed_case(model, images[0])
    torch.cuda.synchronize()
    start = time.perf_counter()
    for image in images:
        embed_case(model, image)
    torch.cuda.synchronize()
    throughput = len(images) / (time.perf_counter() - start)
    step = train_step_seconds(config, scans, 30, device, *train_parts)
    return [(f"GPU ({torch.cuda.get_device_name(0)}): embedding throughput", f"{throughput:.2f} cases/s"),
            (f"GPU ({torch.cuda.get_device_name(0)}): training step, `cpu` preset", f"{step:.3f} s")]


def write(args, quality: dict, rows: list[tuple], gpu_rows: list[tuple], train_minutes: float | None) -> None:
    methods = quality["methods"]
    table = ["| method | MRE (mm) | median (mm) | max (mm) | within 5 mm | within 10 mm | within 20 mm | n |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        table.append(f"| {name} | {m['mre_mm']:.2f} | {m['median_mm']:.2f} | {m['max_mm']:.2f} | "
                     f"{m['within_5mm']:.1%} | {m['within_10mm']:.1%} | {m['within_20mm']:.1%} | {m['n']} |")
    sam, untrained = methods["sam"]["mre_mm"], methods["untrained"]["mre_mm"]
    embed = max(float(r[1].split()[0]) for r in rows if r[0].startswith("embed"))
    match_ms = float(next(r[1] for r in rows if r[0].startswith("one match")).split()[0])
    goals = [f"SAM MRE <= {GOALS['mre_mm']:g} mm: {'met' if sam <= GOALS['mre_mm'] else 'MISSED'} ({sam:.2f} mm)",
             f"at least 2x lower than untrained: {'met' if 2 * sam <= untrained else 'MISSED'} "
             f"({untrained / sam:.1f}x)",
             f"embedding <= {GOALS['embed_s']:g} s: {'met' if embed <= GOALS['embed_s'] else 'MISSED'} ({embed:.2f} s)",
             f"one match <= {GOALS['match_s']:g} s: {'met' if match_ms / 1000 <= GOALS['match_s'] else 'MISSED'} "
             f"({match_ms:.1f} ms)"]
    if train_minutes is not None:
        goals.append(f"training <= {GOALS['train_min']:g} min: "
                     f"{'met' if train_minutes <= GOALS['train_min'] else 'MISSED'} ({train_minutes:.1f} min)")
    lines = [SECTION, "", f"- Command: `python bench/bench_sam.py --checkpoint {args.checkpoint.relative_to(REPO)}`",
             f"- Date: {now()}", f"- Machine: {machine()}", "",
             f"Landmark retrieval, `{quality['source_case']}` structure centroids found in the held-out "
             f"pseudo-subjects {', '.join(quality['key_cases'])} (exact ground truth; `alice eval landmarks`):", "",
             *table, "", "| measure | result |", "|---|---|", *(f"| {m} | {r} |" for m, r in rows), "",
             "Goals on 2 cores: " + "; ".join(goals) + ".",
             "GPU: " + ("; ".join(f"{m}: {r}" for m, r in gpu_rows) if gpu_rows else
                        "no GPU on this machine; the same script records GPU throughput and step time where one is."),
             ""]
    text = "\n".join(lines)
    write_section(SECTION, text)
    print(text)


if __name__ == "__main__":
    main()
