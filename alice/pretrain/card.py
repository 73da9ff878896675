"""Ship an Alice pretraining run as the app's default checkpoint, with a model card of measured figures.

The shipped file keeps what inference needs (config, step, student and teacher weights, centres) in float16 and
drops the optimiser and RNG states (it cannot be resumed; the run folder can). The card records the command,
config, data, training time and losses from the run's ``metrics.jsonl``, and the landmark-retrieval figures of
``alice eval retrieval`` measured on the shipped file.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import yaml

from alice import runs
from alice.atomic import atomic_write, atomic_write_text
from alice.pretrain.positions import TABLE_HEADER, table_cells
from alice.pretrain.train import load_checkpoint

KEPT_KEYS = ("kind", "format_version", "alice_version", "torch_version", "config", "step", "world_size", "best_loss")


def ship_checkpoint(run_dir: str | Path, out: str | Path) -> Path:
    """Write the slim float16 copy of a run's last checkpoint to ``out`` (atomically)."""
    payload = load_checkpoint(runs.checkpoint_path(run_dir))
    slim = {key: payload[key] for key in KEPT_KEYS if key in payload}
    slim["model"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()}
    return atomic_write(out, lambda tmp: torch.save(slim, tmp))


def write_card(run_dir: str | Path, checkpoint: str | Path, card: str | Path, command: str, quality: dict,
               tokens: dict[str, dict[str, dict[str, dict[str, float]]]]) -> Path:
    """Write the model card of a shipped checkpoint.

    Args:
        run_dir: the run folder it came from (config and metrics).
        checkpoint: the shipped file.
        card: the Markdown file to write.
        command: the pretraining command.
        quality: the JSON object of ``alice eval retrieval`` on the shipped file.
        tokens: model name (this checkpoint, the untrained control) -> its
            ``alice.pretrain.positions.token_statistics`` on the sample cohort.
    """
    run_dir = Path(run_dir)
    payload = load_checkpoint(checkpoint)
    config = payload["config"]
    metrics = runs.read_metrics(run_dir)
    last = metrics[-10:]
    mean = {k: sum(m[k] for m in last) / len(last) for k in ("loss/cls", "loss/patch", "loss/rec", "cls_agreement")}
    seconds = runs.training_seconds(metrics)
    uniform = math.log(config["model"]["head_out_dim"])
    collapsed = mean["loss/cls"] > 0.98 * uniform
    rows = "\n".join(f"| {name} | {m['mre_mm']:.2f} | {m['median_mm']:.2f} | {m['max_mm']:.2f} | "
                     f"{m['within_10mm']:.0%} | {m['n']} |" for name, m in quality["methods"].items())
    logit_range = [m["cls_logit_range"] for m in last if "cls_logit_range" in m]
    range_note = (f" The teacher's cls scores span {sum(logit_range) / len(logit_range):.3f} on average (highest minus "
                  "lowest prototype score; near 0 when every prototype ties)." if logit_range else "")
    cls_note = (f"**Known weakness:** the cls (global) branch collapsed: its loss sits at ln({config['model']['head_out_dim']}) "
                f"= {uniform:.2f}, the value of a uniform prediction, and teacher-student cls agreement is "
                f"{mean['cls_agreement']:.2f}. With one view pair per step the centre sees two crops at a time, and the "
                "student, in the runs examined, settled on one cls embedding for every crop, at which all prototype "
                "scores tie. A term that spreads the embeddings against a queue of recent ones (the uniformity term "
                "here, or a MoCo-style contrast tried in development) does not prevent this: the one point drifts "
                "across the sphere and so stays away from its own earlier positions. The cls is the mean of the "
                "encoder tokens: whether they change from crop to crop at all is measured below (crop variance), "
                "and so is the retrieval quality of the dense tokens the explorer uses."
                if collapsed else f"cls loss {mean['loss/cls']:.3f} (uniform would be {uniform:.2f}).") + range_note
    loss = config["loss"]
    departures = []
    if loss.get("uniformity_weight", 0) > 0:
        departures.append(f"a uniformity term on the cls embeddings (weight {loss['uniformity_weight']:g}, "
                          "`loss.uniformity_weight`), against the collapse of one-pair-per-step training")
    if loss.get("correspondence_weight", 0) > 0:
        correspondence = [m["loss/correspondence"] for m in last if "loss/correspondence" in m]
        level = (f"; its loss over the last {len(correspondence)} logged intervals is "
                 f"{sum(correspondence) / len(correspondence):.3f}" if correspondence else "")
        bank = (f", with the far places of the same scan among {loss['correspondence_bank']} recent teacher tokens "
                "as negatives (`loss.correspondence_bank`)" if loss.get("correspondence_bank", 0) else "")
        departures.append(f"a token-level InfoNCE across window placements and across the pair's two patients, at "
                          f"the crop centres and the tokens SAM pairs (weight {loss['correspondence_weight']:g}, "
                          f"`loss.correspondence_weight`{bank}), so that tokens locate anatomy{level}")
    if loss.get("cafa") and loss.get("target_queries") == "teacher":
        departures.append("CAFA's target branch takes the teacher's unmasked encoder tokens as queries "
                          "(`loss.target_queries=teacher`), so the token loss cannot be met by silencing the attention")
    if loss.get("cafa"):
        departures.append("CAFA normalises its input tokens and returns unit-length output tokens, the scale of the "
                          "prototype scores the temperatures are set for (`alice.models.cafa`)")
    extra_note = "".join(f"\n- Not in Alice: {d}." for d in departures)
    token_rows = "\n".join(f"| {name} | {table_cells(statistics)} |" for name, statistics in tokens.items())
    from alice.explore.evaluate import retiling_shift  # the explorer's stack, only when a card is written

    retiling = quality.get("retiling", {})
    retiling_note = (f"\nThe same scan cropped by {retiling_shift(quality)} voxels, where each "
                     "landmark's truth is itself (only where the windows fall changes), mean error in mm: "
                     + ", ".join(f"{name} {m['mre_mm']:.1f}" for name, m in retiling.items()) + ".\n"
                     if retiling else "")
    alice_source = quality.get("sources", {}).get("alice", {})
    tilings = f", the mean of {alice_source['tilings']} tilings" if "tilings" in alice_source else ""
    spacings = (f", at {', '.join(f'{s:g}' for s in alice_source['spacings_mm'])} mm voxels joined"
                if "spacings_mm" in alice_source else "")
    tokens_note = (f" (Alice: {alice_source['network']} backbone, {alice_source['tokens']} tokens{tilings}{spacings})"
                   if "tokens" in alice_source else "")
    text = f"""# Alice, `cpu-tiny` preset: model card

Alice self-supervised pretraining (Jiang et al., ICCV 2023) reimplemented for Alice Explorer: an nnFormer-style
encoder-decoder trained as a masked teacher-student on SAM-mined view pairs of two different patients at the same
anatomy, with the CAFA token alignment and voxel reconstruction. The app uses it for dense embeddings (landmark
retrieval, embedding maps) and as the initialisation for segmentation fine-tuning.

**Intended use:** research and teaching. Not for diagnosis or any clinical use.

## Training
- Command: `{command}`
- Data: the sample cohort's `{config['data']['split']}` split, views mined in `{config['views']['mode']}` mode;
  held-out pseudo-subjects (split `test`) never seen.
- Steps: {payload['step']}; training time {seconds / 60:.1f} min (sum of step times, `metrics.jsonl`); package
  version {payload['alice_version']}.
- Losses over the last {len(last)} logged intervals: cls {mean['loss/cls']:.3f}, token (CAFA) {mean['loss/patch']:.3f},
  reconstruction {mean['loss/rec']:.4f}.
- {cls_note}{extra_note}
- Shipped weights: student and teacher, float16 (`alice.pretrain.card.ship_checkpoint`); no optimiser state.

## Landmark retrieval (`alice eval retrieval`, measured on this file)
{quality['source_case']} landmarks found in held-out {', '.join(quality['key_cases'])} (exact truth), dense
embeddings every 6 mm{tokens_note}:

| source | MRE (mm) | median | max | within 10 mm | n |
|---|---|---|---|---|---|
{rows}
{retiling_note}
## What the tokens encode (`alice.pretrain.positions.token_statistics`)
Over crops anywhere in the body of the sample cohort's training cases, each cell gives the crop variance (how much
the unit token at one place changes from crop to crop; 0: the same token in every crop, whatever anatomy it
shows) and the position share (how much of the tokens' variation their place in the crop alone explains; 1:
position codes):

| model | {TABLE_HEADER} |
|---|---|---|---|---|
{token_rows}

## Config (stored in the checkpoint)
```yaml
{yaml.safe_dump(config, sort_keys=False).strip()}
```
"""
    atomic_write_text(card, text)
    return Path(card)
