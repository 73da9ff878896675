"""Segmentation benchmark (issue 6): scratch vs Alice vs ablations, fine-tuning time, inference time.

(a) The comparison of ``alice eval segmentation`` (``alice.segment.evaluate.compare_methods``): every method
    fine-tuned on at most 4 labelled training pseudo-subjects and scored on the held-out ``test`` pseudo-subjects,
    and on the validation case lidc0001; finished runs reused (so the script resumes an interrupted comparison).
    Written to bench/segmentation.json.
(b) Wall time of each fine-tuning run, from its ``train.log`` (first to last line: training and validation).
(c) Inference of one held-out case with a fine-tuned network (sliding window, whole case), median of 3.

Run: ``python bench/bench_segmentation.py --seeds 0 1 2 --ablation-seeds 0 --ablation NAME=PRETRAINING_RUN ...``;
RESULTS.md records the command of the committed figures, ablations included.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, changed_settings, machine, now, write_section

HEADING = "## Segmentation (issue 6)"
# The sample cohort's validation case: its one real labelled CT (lidc0001), never a fine-tuning case.
VALIDATION = ("train", ("real",))
OUTPUT = REPO / "bench" / "segmentation.json"
LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"


def run_minutes(run_dir: Path) -> float:
    """Minutes from the first to the last line of a run's ``train.log``."""
    lines = [line for line in (run_dir / "train.log").read_text().splitlines() if line[:4].isdigit()]
    first, last = (dt.datetime.strptime(line[:23], LOG_TIME) for line in (lines[0], lines[-1]))
    return (last - first).total_seconds() / 60


def pretraining_minutes(source: str) -> float | None:
    """Summed step time of a pretraining run folder (None for a checkpoint file or bundle)."""
    from alice import runs

    metrics = runs.read_metrics(source) if Path(source).is_dir() else []
    return runs.training_seconds(metrics) / 60 if metrics else None


def inference_seconds(run_dir: Path, repeats: int = 3) -> tuple[str, float]:
    """(case id, median seconds) of predicting the first held-out case with the run's network."""
    from alice import paths
    from alice.data.cohort import load_case, load_manifest
    from alice.segment.network import load_segmentation_net
    from alice.segment.predict import predict_case

    record = next(r for r in load_manifest(paths.SAMPLE_MANIFEST).split("test") if r.origin == "pseudo")
    case = load_case(record)
    model = load_segmentation_net(run_dir)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predict_case(model, case.image)
        times.append(time.perf_counter() - started)
    return record.case_id, statistics.median(times)


def table(result: dict) -> str:
    methods = result["methods"]
    structures = list(next(iter(methods.values()))["per_structure"])
    rows = ["| method | Dice mean | std | HD95 (mm) | seeds | validation Dice | " + " | ".join(structures) + " |",
            "|---|---|---|---|---|---|" + "---|" * len(structures)]
    for name, m in methods.items():
        cells = [f"{m['dice_mean']:.3f}" if m["dice_mean"] is not None else "n/a",
                 f"{m['dice_std']:.3f}" if m["dice_std"] is not None else "n/a",
                 f"{m['hd95_mean']:.1f}" if m["hd95_mean"] is not None else "n/a",
                 " ".join(str(s) for s in m["seeds"]),
                 f"{m['validation_dice_mean']:.3f} +/- {m['validation_dice_std']:.3f}"
                 if m.get("validation_dice_mean") is not None else "n/a"]
        cells += [f"{m['per_structure'][s]:.2f}" if m["per_structure"].get(s) is not None else "n/a"
                  for s in structures]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ablation", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ablation-seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()

    from alice import paths, runs
    from alice.pretrain.train import load_checkpoint
    from alice.segment.evaluate import compare_methods
    from alice.segment.train import FinetuneConfig

    ablations = dict(item.split("=", 1) for item in args.ablation)
    started = time.perf_counter()
    result = compare_methods(paths.alice_checkpoint(), ablations, args.seeds, ablation_seeds=args.ablation_seeds,
                             validation=VALIDATION)
    comparison_minutes = (time.perf_counter() - started) / 60
    OUTPUT.write_text(json.dumps(result, indent=2) + "\n")

    run_dirs = [Path(r["run"]) for m in result["methods"].values() for r in m["per_seed"].values()]
    minutes = {d.name: run_minutes(d) for d in run_dirs}
    # The goal is about a default run: the scratch and Alice runs (the ablations only change the initialisation).
    main_minutes = [v for k, v in minutes.items() if k.split("-seed")[0] in ("scratch", "alice")]
    case_id, seconds = inference_seconds(next(d for d in run_dirs if d.name.startswith("alice-")))
    scratch, alice = result["methods"]["scratch"]["dice_mean"], result["methods"]["alice"]["dice_mean"]
    config = FinetuneConfig.from_dict(runs.read_config(run_dirs[0]))
    shipped_steps = load_checkpoint(paths.alice_checkpoint())["step"]
    pretraining = {name: runs.read_config(path) or {} for name, path in ablations.items()}
    command = " ".join(["python bench/bench_segmentation.py", "--seeds", *map(str, args.seeds), "--ablation-seeds",
                        *map(str, args.ablation_seeds), *(f"--ablation {a}" for a in args.ablation)])
    ablation_origin = ("The ablations fine-tune from pretraining runs (steps; settings other than the cpu-tiny "
                       "preset's): " + ", ".join(f"{n} ({c.get('run', {}).get('steps')}; {changed_settings(c)})"
                                                 for n, c in pretraining.items()) if pretraining else
                       "No ablations in this comparison")
    ablation_minutes = (", plus the ablations' pretraining runs (summed step time): "
                        + ", ".join(f"{name} {m:.1f} min" for name, path in ablations.items()
                                    if (m := pretraining_minutes(path)) is not None) if ablations else "")
    text = (f"{HEADING}\n\nCommand: `{command}` (the same comparison as `alice eval segmentation --seeds "
            + " ".join([*map(str, args.seeds), "--ablation-seeds", *map(str, args.ablation_seeds),
                        *(f"--ablation {a}" for a in args.ablation), "--validation-split", VALIDATION[0],
                        "--validation-origins", *VALIDATION[1], "--json"])
            + f"`); machine: {machine()}; "
            f"date: {now()}. Full output: bench/segmentation.json.\n\n"
            f"(a) Fine-tuned on {config.data.train_cases} labelled training pseudo-subjects (`cpu-tiny` nnFormer, "
            f"{config.data.label_set} label set, {config.run.steps} steps), scored on the held-out test pseudo-subjects (never seen by SAM training, pretraining or "
            f"fine-tuning); mean Dice over the 9 structures per run, then mean and std over seeds. {ablation_origin}"
            f" (the shipped `alice` checkpoint: {shipped_steps} steps):\n\n"
            f"{table(result)}\n\n"
            f"Validation Dice: the same runs scored on {', '.join(result['validation']['cases'])} (the real labelled "
            "CT the pseudo-subjects derive from; never fine-tuned on, and not a test case), where choices such as "
            "the pretraining length are made.\n\n"
            f"Alice - scratch: {100 * (alice - scratch):+.2f} Dice points (goal: at least +2).\n\n"
            f"(b) Fine-tuning run wall time (training and validation), minutes, scratch and Alice runs: median "
            f"{statistics.median(main_minutes):.1f}, max {max(main_minutes):.1f} over {len(main_minutes)} runs "
            f"(goal <= 10); all {len(minutes)} fine-tuning runs together {sum(minutes.values()):.0f} min (goal for "
            f"the whole comparison <= 150 min){ablation_minutes}. This script: "
            f"{comparison_minutes:.1f} min (finished runs reused).\n\n"
            f"(c) Inference of {case_id} (whole case, sliding window): {seconds:.1f} s median of 3 (goal <= 20 s).\n")
    write_section(HEADING, text)
    print(json.dumps({"comparison": result, "run_minutes": minutes, "inference_seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
