"""What the Alice tokens encode: how much they change from crop to crop, and how much their place in the crop explains.

Run from the repository root: ``python bench/bench_tokens.py [--run NAME=PRETRAINING_RUN ...]``. Crops are taken
at random voxels inside the body of the sample cohort's training cases (seeded); each model's teacher and student
backbones run on the whole crops, as dense embeddings use them, and ``alice.pretrain.positions.token_statistics`` of
their encoder (bottleneck) and decoder tokens is reported. Rows: the untrained network (the control), the shipped
checkpoint, and each ``--run``'s last checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, changed_settings, machine, now, write_section  # noqa: E402  (bench/ is not a package)

SECTION = "## What the Alice tokens encode (bench/bench_tokens.py)"


def settings(checkpoint: Path | None) -> str:
    """The losses, masks and views of a checkpoint's config that differ from the cpu-tiny preset's."""
    if checkpoint is None:
        return "-"
    from alice.pretrain.train import load_checkpoint

    return changed_settings(load_checkpoint(checkpoint)["config"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], metavar="NAME=PATH",
                        help="a pretraining run folder to measure too (repeatable)")
    parser.add_argument("--crops", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from alice import paths, runs
    from alice.data.cohort import load_manifest
    from alice.data.io import load_volume
    from alice.pretrain import inspect
    from alice.pretrain.positions import TABLE_HEADER, table_cells

    images = {record.case_id: load_volume(record.image)
              for record in load_manifest(paths.SAMPLE_MANIFEST).split("train")}
    sources = {"untrained (seed 0)": None, "shipped": paths.alice_checkpoint()}
    sources.update({name: Path(path) / runs.CHECKPOINTS_DIR / runs.LAST_CHECKPOINT
                    for name, path in (item.split("=", 1) for item in args.run)})
    rows = []
    for name, checkpoint in sources.items():
        statistics, step = inspect.checkpoint_token_statistics(checkpoint, images, args.crops, args.seed)
        rows.append(f"| {name} | {'-' if step is None else step} | {settings(checkpoint)} | "
                    f"{table_cells(statistics)} |")
        print(rows[-1], flush=True)
    command = " ".join(["python bench/bench_tokens.py", *(f"--run {item}" for item in args.run)])
    lines = [SECTION, "", f"- Command: `{command}`", f"- Date: {now()}", f"- Machine: {machine()}", "",
             (f"Over {args.crops} crops at random voxels inside the body of the sample cohort's training cases, each "
              "cell gives the crop variance (how much the unit token at one place changes from crop to crop; 0: "
              "the same token in every crop, whatever anatomy it shows) and the position share (how much of the "
              "tokens' variation their place in the crop alone explains; 1: position codes):"), "",
             f"| model | step | settings other than the `cpu-tiny` preset's | {TABLE_HEADER} |",
             "|---|---|---|---|---|---|---|", *rows, ""]
    text = "\n".join(lines)
    write_section(SECTION, text)
    print(text)


if __name__ == "__main__":
    main()
