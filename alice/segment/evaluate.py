"""Segmentation evaluation on held-out cases, and the comparison Alice reports: fine-tuning from scratch vs from
Alice (Jiang et al., ICCV 2023, FLARE22 / BTCV Dice) vs ablation checkpoints, over several seeds.

Every fine-tuning run of a comparison lives in ``<workspace>/runs/segment/<method>-seed<k>/``: a finished run with
the same config is reused, an unfinished one resumed, so an interrupted comparison continues where it stopped.
A run's scores on its held-out test cases are cached in its ``evaluation.json`` (keyed by checkpoint step and
cases), scores on other cases (a validation set) beside it.

A comparison can also score every run on validation cases, kept apart from the test cases, so that choices such as
the pretraining length are made without looking at the test scores. The sample cohort has no labelled organ case in
its ``val`` split; its validation case is the one real labelled CT (lidc0001, split ``train``, origin ``real``): the
parent scan of the pseudo-subjects, never a fine-tuning case, though SAM training and pretraining see its image.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from alice import paths, runs
from alice.atomic import atomic_write_text
from alice.config import differences
from alice.data.cohort import LoadedCase
from alice.errors import InputError
from alice.segment.labels import get_label_set
from alice.segment.metrics import average_scores, mean_of, segmentation_scores
from alice.segment.network import (
    SCRATCH,
    SegmentationNet,
    initial_weights_hash,
    load_segmentation_checkpoint,
    load_segmentation_net,
)
from alice.segment.predict import EVALUATION_FILE, predict_case
from alice.segment.train import RUN_KIND, FinetuneConfig, default_config, finetune, labelled_cases, resolve_config

log = logging.getLogger(__name__)

ALICE = "alice"


def evaluate_model(model: SegmentationNet, cases: list[tuple[LoadedCase, np.ndarray]]) -> dict:
    """Dice and HD95 (mm) of a network on labelled cases (sliding window over each whole volume).

    Returns:
        ``{"cases", "classes": {class: {"dice", "hd95"}}, "dice_mean", "hd95_mean", "per_case": {case:
        {"dice_mean", "hd95_mean"}}}``; class scores are means over the cases where they are defined, the means
        over the classes.
    """
    per_case = {case.record.case_id: segmentation_scores(predict_case(model, case.image).array, truth,
                                                         model.class_names, case.image.spacing_mm)
                for case, truth in cases}
    classes = average_scores(list(per_case.values()))
    return {"cases": list(per_case), "classes": classes, "dice_mean": mean_of(classes, "dice"),
            "hd95_mean": mean_of(classes, "hd95"),
            "per_case": {case: {"dice_mean": mean_of(s, "dice"), "hd95_mean": mean_of(s, "hd95")}
                         for case, s in per_case.items()}}


def evaluate_run(run_dir: str | Path, split: str = "test", origins: Sequence[str] | None = None) -> dict:
    """The scores of a fine-tuning run's last checkpoint on the labelled cases of ``split`` of its cohort.

    Args:
        run_dir: the fine-tuning run.
        split: the manifest split scored.
        origins: the case origins scored (default: the run's training origins).

    Cached while the checkpoint step, the split and the origins stay the same: in the run's ``evaluation.json``
    for the test split with the run's origins (what its exported model card reports), else in
    ``evaluation-<split>-<origins>.json``.

    Raises:
        InputError: no segmentation checkpoint in ``run_dir``, or no labelled case in ``split``.
    """
    run_dir = Path(run_dir)
    payload = load_segmentation_checkpoint(runs.checkpoint_path(run_dir))
    config = FinetuneConfig.from_dict(payload["config"])
    origins = list(config.data.origins if origins is None else origins)
    default_cases = split == "test" and origins == list(config.data.origins)
    cache = run_dir / (EVALUATION_FILE if default_cases else f"evaluation-{split}-{'-'.join(origins)}.json")
    if cache.is_file():
        cached = json.loads(cache.read_text())
        key = (cached.get("step"), cached.get("split"), cached.get("origins", origins))
        if key == (payload["step"], split, origins):
            return cached
    cases = labelled_cases(config.data.manifest, split, tuple(origins), None, get_label_set(config.data.label_set))
    if not cases:
        raise InputError(config.data.manifest, f"has no labelled case of origin {' or '.join(origins)} in split "
                                               f"{split!r} to evaluate on")
    result = {"run": str(run_dir), "step": payload["step"], "split": split, "origins": origins,
              **evaluate_model(load_segmentation_net(run_dir), cases)}
    result = _without_nan(result)
    atomic_write_text(cache, json.dumps(result, indent=2))
    return result


def ensure_run(config: FinetuneConfig, run_dir: str | Path,
               progress: Callable[[int, int, dict], None] | None = None) -> Path:
    """A finished fine-tuning run of ``config`` in ``run_dir``: reused when finished, resumed when interrupted,
    started when absent.

    Raises:
        InputError: the folder holds a run of another config (keys named), or one that is running now.
    """
    run_dir = Path(run_dir)
    status = runs.read_status(run_dir) or {}
    if status.get("state") in runs.ACTIVE_STATES:
        raise InputError(run_dir, f"is running now (pid {status.get('pid')}); wait for it or stop it")
    if not runs.checkpoint_path(run_dir).exists():
        runs.truncate_metrics(run_dir, 0)  # a run killed before its first checkpoint starts again
        finetune(config, run_dir, progress=progress)
        return run_dir
    stored = load_segmentation_checkpoint(runs.checkpoint_path(run_dir))
    resolved = resolve_config(config)
    changed = differences(stored["config"], resolved.to_dict())
    if changed:
        raise InputError(run_dir, "holds a run of another config (" + "; ".join(changed) + "); delete the folder "
                                  "or use another workspace")
    if resolved.init != SCRATCH and stored.get("init_weights") != initial_weights_hash(resolved.init):
        raise InputError(run_dir, f"holds a run fine-tuned from other weights than {resolved.init} holds now (was "
                                  "it retrained?); delete the folder or use another workspace")
    if status.get("state") != "finished":
        finetune(config, run_dir, resume=True, progress=progress)
    return run_dir


def compare_methods(alice_checkpoint: str | Path | None, ablations: dict[str, str] | None = None,
                    seeds: Sequence[int] = (0, 1, 2), methods: Sequence[str] = (SCRATCH, ALICE),
                    base: FinetuneConfig | None = None, split: str = "test",
                    on_run: Callable[[str, int, Path], None] | None = None,
                    ablation_seeds: Sequence[int] | None = None,
                    validation: tuple[str, Sequence[str]] | None = None) -> dict:
    """Fine-tune once per method and seed (or reuse the runs), evaluate each on ``split``, summarise over seeds.

    Args:
        alice_checkpoint: the Alice pretraining checkpoint, run folder or bundle of method ``alice``; its
            architecture is used for every method, so all fine-tune the same network.
        ablations: further methods, name -> pretrained source (e.g. ``random_cross=runs/alice/x``).
        seeds: fine-tuning seeds.
        methods: which of ``scratch`` and ``alice`` to run (ablations always run).
        base: the fine-tuning config apart from ``init``, seed and architecture (default: the defaults).
        split: the held-out split.
        on_run: called with (method, seed, run folder) before each run is ensured.
        ablation_seeds: the ablations' seeds (default: ``seeds``), where time allows fewer.
        validation: (split, origins) of validation cases every run is also scored on, or None.

    Returns:
        ``{"split", "methods": {name: {"dice_mean", "dice_std", "hd95_mean", "seeds", "per_seed": {seed:
        {"dice_mean", "hd95_mean", "run"}}, "per_structure": {class: dice_mean}}}}``: means and (population)
        standard deviations over seeds of each run's mean Dice. With ``validation``, also ``"validation":
        {"split", "origins", "cases"}`` and, per method, ``validation_dice_mean`` and ``validation_dice_std``.

    Raises:
        InputError: an unknown method, ``alice`` without a checkpoint, or a source of another architecture.
    """
    inits = {name: init for name, init in {SCRATCH: SCRATCH, ALICE: alice_checkpoint}.items() if name in methods}
    unknown = sorted(set(methods) - {SCRATCH, ALICE})
    if unknown:
        raise InputError(None, f"unknown method(s) {unknown}; give {SCRATCH!r}, {ALICE!r} and ablations as name=path")
    if ALICE in inits and not alice_checkpoint:
        raise InputError(None, "method 'alice' needs an Alice checkpoint")
    seeds_of = {name: list(seeds) for name in inits}
    seeds_of.update({name: list(seeds if ablation_seeds is None else ablation_seeds) for name in ablations or {}})
    inits.update(ablations or {})
    base = base or FinetuneConfig()
    if alice_checkpoint:
        base = dataclasses.replace(base, model=dataclasses.replace(
            default_config(str(alice_checkpoint)).model, drop_path=base.model.drop_path))
    results, validation_cases = {}, None
    for name, init in inits.items():
        per_seed, validation_per_seed = {}, {}
        for seed in seeds_of[name]:
            run_dir = paths.runs_dir(RUN_KIND) / f"{name}-seed{seed}"
            if on_run is not None:
                on_run(name, seed, run_dir)
            config = dataclasses.replace(base, init=str(init), run=dataclasses.replace(base.run, seed=seed))
            per_seed[seed] = evaluate_run(ensure_run(config, run_dir), split)
            if validation is not None:
                validation_per_seed[seed] = evaluate_run(run_dir, *validation)
                validation_cases = validation_per_seed[seed]["cases"]
        results[name] = _summary(per_seed)
        if validation is not None:
            summary = _summary(validation_per_seed)
            results[name].update(validation_dice_mean=summary["dice_mean"], validation_dice_std=summary["dice_std"])
    result = {"split": split, "methods": results}
    if validation is not None:
        result["validation"] = {"split": validation[0], "origins": list(validation[1]), "cases": validation_cases}
    return result


def _summary(per_seed: dict[int, dict]) -> dict:
    dice = [r["dice_mean"] for r in per_seed.values() if r["dice_mean"] is not None]
    classes = average_scores([r["classes"] for r in per_seed.values()])
    return _without_nan({
        "dice_mean": float(np.mean(dice)) if dice else None, "dice_std": float(np.std(dice)) if dice else None,
        "hd95_mean": mean_of({str(s): r for s, r in per_seed.items()}, "hd95_mean"), "seeds": list(per_seed),
        "per_seed": {seed: {"dice_mean": r["dice_mean"], "hd95_mean": r["hd95_mean"], "run": r["run"]}
                     for seed, r in per_seed.items()},
        "per_structure": {name: s["dice"] for name, s in classes.items()}})


def _without_nan(value):
    """The value with every NaN as None, for strict JSON (an undefined score)."""
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nan(v) for v in value]
    return None if isinstance(value, float) and not np.isfinite(value) else value
