"""Two CPU ranks under torchrun (gloo): the CLI runs as torchrun's module, and the ranks stay identical."""

import dataclasses
import os
import subprocess
import sys

import pytest

from alice import paths, runs
from alice.pretrain.config import PretrainConfig, save_config
from alice.pretrain.ssl_model import build_ssl_model
from alice.pretrain.train import fingerprint, load_checkpoint
from tests.pretrain.conftest import tiny_pretrain_config


@pytest.mark.slow
def test_two_gloo_ranks_end_with_identical_students_and_centres(tiny_cohort, tmp_path):
    config = tiny_pretrain_config(tiny_cohort, steps=3)
    # The uniformity queue is all-gathered: the fingerprints below include it.
    config = dataclasses.replace(config, optim=dataclasses.replace(config.optim, grad_accumulation=2),
                                 loss=dataclasses.replace(config.loss, uniformity_weight=0.5))
    config_file = save_config(config, tmp_path / "config.yaml")
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "alice", "pretrain", "--config", str(config_file), "--out", str(out)]
    result = subprocess.run(command, check=False, cwd=paths.REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert runs.read_status(out)["state"] == "finished"
    assert [m["step"] for m in runs.read_metrics(out)] == [1, 2, 3]

    payload = load_checkpoint(runs.checkpoint_path(out))
    assert payload["world_size"] == 2 and len(payload["rng"]) == 2
    # Each rank hashed its own student weights, centres and uniformity queue before rank 0 saved: all equal.
    first, second = payload["rank_fingerprints"]
    assert first == second
    model = build_ssl_model(PretrainConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["model"])
    assert fingerprint(model) == first
    # The ranks drew different pairs (their samplers are seeded with (seed, rank)).
    assert payload["rng"][0]["sampler"] != payload["rng"][1]["sampler"]
