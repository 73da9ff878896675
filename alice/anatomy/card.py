"""The model card of a SAM training run: command, config, data, and the measured training figures."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from alice.anatomy.model import load_sam
from alice.atomic import atomic_write_text
from alice.data.cohort import CaseRecord


def write_sam_card(run_dir: str | Path, command: str, records: list[CaseRecord]) -> Path:
    """Write ``MODEL_CARD.md`` into a finished run folder (reads its checkpoint and ``metrics.jsonl``)."""
    run_dir = Path(run_dir)
    checkpoint = load_sam(run_dir / "checkpoints" / "last.pt")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = metrics[-50:]
    mean = {k: sum(m[k] for m in last) / len(last) for k in ("loss", "loss/local", "loss/global")}
    parameters = sum(p.numel() for p in checkpoint.model.parameters())
    text = f"""# SAM anatomical embedding, `cpu` preset: model card

Self-supervised anatomical embedding (Yan et al., SAM, IEEE TMI 2022), reimplemented in pure torch for Alice
Explorer. Every voxel gets a local (fine) and a global (coarse) L2-normalised embedding; matching a point across
scans takes the argmax of the mean of the two cosine similarities (refined to a quarter of a local voxel). Used to
mine Alice's cross-patient view pairs.

**Intended use:** research and teaching (view mining, landmark retrieval demos). Not for diagnosis or any
clinical use.

## Training
- Command: `{command}`
- Data: the sample cohort's training split ({len(records)} scans: {", ".join(r.case_id for r in records)}); no
  labels are used. The held-out pseudo-subjects (split `test`) and `lung2` (split `val`) were never seen.
- Steps: {checkpoint.step}; training time {sum(m["seconds"] for m in metrics) / 60:.1f} min (sum of step times,
  `metrics.jsonl`); {parameters:,} parameters; package version {checkpoint.alice_version}.
- Loss over the last {len(last)} steps (InfoNCE, temperature {checkpoint.config.train.temperature}): total
  {mean["loss"]:.3f}, local {mean["loss/local"]:.3f}, global {mean["loss/global"]:.3f}.

## Config (stored in the checkpoint; loading rebuilds the network from it alone)
```yaml
{yaml.safe_dump(checkpoint.config.to_dict(), sort_keys=False).strip()}
```

## Quality
Landmark retrieval on the held-out pseudo-subjects, against the untrained network and NCC: `alice eval landmarks`
(the figures are in `bench/RESULTS.md`, SAM section, with the command and date).

## Limits
Trained on one real patient's deformed copies plus two real chest CTs: it knows the chest and upper abdomen of
this cohort, at 4 mm input spacing (8 mm local grid; matches are refined between its voxels). Like SAM,
it is unreliable on textureless regions and cannot match outside the body or the trained body region.
"""
    return atomic_write_text(run_dir / "MODEL_CARD.md", text)
