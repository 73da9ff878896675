"""Alice pretraining: one plain loop, single process or under ``torchrun`` (Jiang et al., ICCV 2023).

Per optimiser step: mine B view pairs per rank (and micro-batch), run teacher and student, the three losses,
backward (DDP averages the student's gradients), freeze the prototype layers in the first steps, clip each
parameter's gradient (DINO style), AdamW with the step's LR and weight decay (none on biases and norms), then
the EMA teacher update; the centres follow the teacher outputs after every micro-batch (all-reduced). At every
checkpoint rank 0 also measures what the encoder tokens encode on a few body crops (``alice.pretrain.positions``)
and logs it with that step's metrics: a crop variance near 0 means the token at a place is the same in every crop,
and a position share near 1 that the tokens say where they sit in the crop, not what anatomy they see.

The run folder follows ``alice.runs``; rank 0 writes it. A checkpoint holds the config (plain data), every
weight and centre, the optimiser, the step (the schedules' position), the best loss so far, and the RNG states
of every rank (python, numpy, torch, the view sampler), so ``resume=True`` continues exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from alice import __version__, runs
from alice.atomic import atomic_write
from alice.errors import InputError
from alice.pretrain.config import PretrainConfig, resolve_config, validate
from alice.pretrain.positions import MEASURES, body_crops, token_statistics
from alice.pretrain.schedules import Schedules, build_schedules
from alice.pretrain.ssl_model import AliceSSL, build_ssl_model
from alice.pretrain.views import PairSampler, load_mining_cases

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "alice"
FORMAT_VERSION = 6  # 2: parity-free decoder upsampling; 3: CAFA input norms; 4: decoder skips, unit CAFA tokens;
# 5: edge-replicating convs; 6: instance norm in the convs
METRIC_KEYS = ("loss", "loss/cls", "loss/patch", "loss/rec", "loss/uniformity", "loss/correspondence", "cls_agreement",
               "cls_logit_range")
TOKEN_CROPS = 8  # body crops on which each checkpoint's token statistics are measured


@dataclass(frozen=True)
class Process:
    """Where this process runs: rank, number of ranks, device, and whether it started the process group."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_process() -> Process:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1): NCCL on GPU, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world_size <= 1:
        return Process(0, 1, torch.device("cuda" if cuda else "cpu"), False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Process(dist.get_rank(), dist.get_world_size(), device, owns)


def parameter_groups(module: nn.Module) -> list[dict]:
    """AdamW groups: weights with weight decay, then biases and other 1-D parameters (norms) without."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def clip_each_gradient(parameters: list[nn.Parameter], max_norm: float) -> None:
    """Scale every parameter's gradient whose norm exceeds ``max_norm`` down to it (DINO's per-parameter clip)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    norms = torch.stack(torch._foreach_norm(grads))
    scales = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(scales.unbind()))


def load_checkpoint(path: str | Path) -> dict:
    """An Alice pretraining checkpoint as plain data (``torch.load(weights_only=True)``).

    Raises:
        InputError: missing or unreadable file, or a checkpoint of another kind or format version.
    """
    return runs.load_checkpoint_file(path, CHECKPOINT_KIND, FORMAT_VERSION)


def fingerprint(model: AliceSSL) -> str:
    """SHA-256 of the student's weights, both centres and the uniformity queue: equal on every rank of a healthy
    run."""
    digest = hashlib.sha256()
    tensors = [*model.student.state_dict().values(), model.cls_loss.centre, model.patch_loss.centre]
    if model.uniformity is not None:
        tensors.append(model.uniformity.queue)
    for tensor in tensors:
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def pretrain(config: PretrainConfig, out_dir: str | Path, resume: bool = False,
             progress: Callable[[int, int, dict], None] | None = None) -> Path:
    """Pretrain Alice into a run folder, or continue one.

    Args:
        config: the run's config; default paths are resolved and recorded in ``config.yaml``.
        out_dir: the run folder (``alice.runs`` contract).
        resume: continue from ``checkpoints/last.pt``; the config must equal the checkpoint's.
        progress: called on rank 0 after every step (and its metrics and checkpoint) with (step, total steps,
            that step's values).

    Returns:
        The last checkpoint.

    Raises:
        InputError: an invalid config, a run folder that already holds a run (without ``resume``) or none (with
            it), a config that differs from the one being resumed, or unreadable data.
        RuntimeError: a non-finite loss.
    """
    config = resolve_config(config)
    validate(config)
    out_dir = Path(out_dir)
    last = runs.checkpoint_path(out_dir)
    payload = _resume_payload(config, out_dir) if resume else None
    if not resume and (last.exists() or runs.read_metrics(out_dir)):
        raise InputError(out_dir, "already holds a run; pass --resume to continue it, or choose another folder")
    process = init_process()
    try:
        return _train(config, out_dir, payload, process, progress)
    finally:
        if process.owns_group:
            dist.destroy_process_group()


def _resume_payload(config: PretrainConfig, out_dir: Path) -> dict:
    return runs.resume_payload(out_dir, config.to_dict(), load_checkpoint)


def _train(config: PretrainConfig, out_dir: Path, payload: dict | None, process: Process,
           progress: Callable[[int, int, dict], None] | None) -> Path:
    run = config.run
    writer = process.rank == 0
    start_step = int(payload["step"]) if payload else 0
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
        runs.clear_stop(out_dir)
        runs.write_config(out_dir, config.to_dict())
        runs.write_status(out_dir, "starting", start_step, run.steps, "loading cases")
        if payload:
            runs.truncate_metrics(out_dir, start_step)
    with runs.log_to_file(out_dir) if writer else contextlib.nullcontext():
        try:
            return _loop(config, out_dir, payload, process, progress)
        except BaseException as exc:
            if writer:
                log.exception("pretraining failed")
                state = runs.read_status(out_dir) or {}
                runs.write_status(out_dir, "failed", state.get("step", start_step), run.steps,
                                  f"{type(exc).__name__}: {exc}")
            raise


def _loop(config: PretrainConfig, out_dir: Path, payload: dict | None, process: Process,
          progress: Callable[[int, int, dict], None] | None) -> Path:
    run, optim, views, mask = config.run, config.optim, config.views, config.mask
    writer = process.rank == 0
    device = process.device
    # Rank 0 fills the SAM embedding cache first; the others then read it.
    if process.distributed and not writer:
        dist.barrier()
    cases = load_mining_cases(config.data.manifest, config.data.split, views.mode, views.sam_checkpoint or None)
    if process.distributed and writer:
        dist.barrier()

    torch.manual_seed(run.seed)  # identical initial weights on every rank
    model = build_ssl_model(config).to(device)
    model.train()
    optimizer = torch.optim.AdamW(parameter_groups(model.student), lr=0.0)
    sampler = PairSampler(cases, views.mode, config.model.roi, views.hu_window, views.threshold, views.max_tries,
                          views.margin_voxels, mask.cell_voxels, mask.ratio, mask.shape, optim.batch_pairs,
                          run.seed, process.rank, process.world_size, model.correspondence_shift(),
                          model.correspondence_grids())
    schedules = build_schedules(run.steps, optim.lr, optim.min_lr, optim.warmup_steps,
                                (optim.weight_decay_start, optim.weight_decay_end),
                                (optim.momentum_start, optim.momentum_end),
                                (config.loss.teacher_temp_start, config.loss.teacher_temp),
                                config.loss.teacher_temp_warmup_steps)
    step, best_loss = 0, None
    torch.manual_seed(run.seed + process.rank)  # drop-path and dropout differ between ranks
    if payload:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        step, best_loss = int(payload["step"]), payload["best_loss"]
        _restore_rng(payload, process, sampler)
    student = model.student
    if process.distributed:
        # Without CAFA the head's encoder-token path feeds no loss, so its parameters get no gradient.
        student = DistributedDataParallel(model.student, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=not config.loss.cafa)
    bf16 = optim.bf16 and device.type == "cuda"
    trainable = [p for p in model.student.parameters() if p.requires_grad]
    prototypes = model.student.prototype_parameters()
    log.info("Alice pretraining: %d steps from step %d, %d rank(s) on %s, %d pair(s) per optimiser step, "
             "%d student / %d teacher parameters, view mode %s, bf16 %s, run folder %s", run.steps, step,
             process.world_size, device, optim.batch_pairs * optim.grad_accumulation * process.world_size,
             sum(p.numel() for p in model.student.parameters()), sum(p.numel() for p in model.teacher.parameters()),
             views.mode, bf16, out_dir)
    tensorboard = None
    if writer:
        from torch.utils.tensorboard import SummaryWriter

        tensorboard = SummaryWriter(str(out_dir / runs.TENSORBOARD_DIR), purge_step=step + 1)
        runs.write_status(out_dir, "running", step, run.steps, f"resumed at step {step}" if payload else "started")

    interval, since_checkpoint = _Totals(), _Totals()
    probe = _TokenProbe(cases, config, device)
    state = "finished"
    try:
        while step < run.steps:
            started = time.perf_counter()
            values = schedules.at(step)
            optimizer.param_groups[0]["weight_decay"] = values["wd"]
            for group in optimizer.param_groups:
                group["lr"] = values["lr"]
            optimizer.zero_grad(set_to_none=True)
            totals = dict.fromkeys(METRIC_KEYS, 0.0)
            for micro in range(optim.grad_accumulation):
                batch = sampler.next_batch().to(device)
                last_micro = micro == optim.grad_accumulation - 1
                sync = student.no_sync() if process.distributed and not last_micro else contextlib.nullcontext()
                with sync:
                    with torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                        losses = model.compute_losses(batch, values["teacher_temp"], student)
                    (losses["loss"] / optim.grad_accumulation).backward()
                model.update_centres(losses)
                for key in METRIC_KEYS:
                    totals[key] += float(losses[key].detach()) / optim.grad_accumulation
            if not np.isfinite(totals["loss"]):
                raise RuntimeError(f"the loss became {totals['loss']} at step {step + 1} ({totals})")
            if step < optim.freeze_last_layer_steps:
                for p in prototypes:
                    p.grad = None
            if optim.clip_grad > 0:
                clip_each_gradient(trainable, optim.clip_grad)
            optimizer.step()
            model.update_teacher(values["momentum"])
            step += 1

            seconds = time.perf_counter() - started
            record = {**totals, **values, "seconds_per_step": seconds}
            interval.add(record)
            since_checkpoint.add(record)
            stop = _stop_requested(out_dir, process)
            checkpoint_now = step % run.checkpoint_every == 0 or step == run.steps or stop
            if step % run.log_every == 0 or checkpoint_now:
                mean = interval.mean(process)
                interval = _Totals()
                if writer:
                    if checkpoint_now:
                        mean.update(probe.measure(model))
                    _log_metrics(out_dir, tensorboard, model, step, run.steps, mean)
            if checkpoint_now:
                interval_loss = since_checkpoint.mean(process)["loss"]
                since_checkpoint = _Totals()
                best = best_loss is None or interval_loss < best_loss
                best_loss = interval_loss if best else best_loss
                _save(out_dir, config, model, optimizer, sampler, schedules, step, best_loss, best, process)
            if writer and progress is not None:
                progress(step, run.steps, record)
            if stop:
                state = "stopped"
                break
    finally:
        if tensorboard is not None:
            tensorboard.close()
    if writer:
        runs.finish_run(out_dir, state, step, run.steps, "alice pretrain")
    return runs.checkpoint_path(out_dir)


class _TokenProbe:
    """What the encoder tokens encode (``alice.pretrain.positions``), measured by rank 0 at every checkpoint on
    ``TOKEN_CROPS`` body crops fixed for the run (made at the first measurement; no RNG state is touched)."""

    def __init__(self, cases: list, config: PretrainConfig, device: torch.device):
        self.cases, self.config, self.device = cases, config, device
        self.crops: torch.Tensor | None = None

    def measure(self, model: AliceSSL) -> dict[str, float]:
        """``crop_variance/{teacher,student}`` and ``position_share/{teacher,student}`` of the encoder tokens."""
        if self.crops is None:
            images = {case.case_id: case.image for case in self.cases}
            self.crops = body_crops(images, self.config, TOKEN_CROPS, self.config.run.seed).to(self.device)
        statistics = token_statistics(model, self.crops)
        return {f"{measure}/{network}": statistics[network]["encoder"][measure]
                for network in statistics for measure in MEASURES}


class _Totals:
    """Sums of per-step values over an interval; the mean is taken over every rank."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.steps = 0

    def add(self, record: dict) -> None:
        for key, value in record.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1

    def mean(self, process: Process) -> dict[str, float]:
        keys = sorted(self.sums)
        values = torch.tensor([self.sums[k] for k in keys], dtype=torch.float64) / max(self.steps, 1)
        if process.distributed:
            values = values.to(process.device)
            dist.all_reduce(values)
            values = values.cpu() / process.world_size
        return dict(zip(keys, values.tolist()))


def _stop_requested(out_dir: Path, process: Process) -> bool:
    """Rank 0 looks for the STOP file; every rank gets its answer, so all stop at the same step."""
    flag = torch.tensor([float(process.rank == 0 and runs.stop_requested(out_dir))], device=process.device)
    if process.distributed:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _log_metrics(out_dir: Path, tensorboard, model: AliceSSL, step: int, total: int, mean: dict) -> None:
    record = {"step": step, **{k: mean[k] for k in METRIC_KEYS}, "lr": mean["lr"], "wd": mean["wd"],
              "momentum": mean["momentum"], "teacher_temp": mean["teacher_temp"],
              "centre_norm/cls": float(model.cls_loss.centre.norm()),
              "centre_norm/patch": float(model.patch_loss.centre.norm()),
              "seconds_per_step": mean["seconds_per_step"],
              **{k: v for k, v in mean.items() if k.split("/")[0] in MEASURES}}
    runs.append_metrics(out_dir, record)
    for key, value in record.items():
        if key != "step":
            tensorboard.add_scalar(key, value, step)
    tensorboard.flush()
    eta = mean["seconds_per_step"] * (total - step)
    runs.write_status(out_dir, "running", step, total, f"step {step}/{total}, loss {record['loss']:.4f}", eta)
    log.info("step %d/%d loss %.4f (cls %.4f, patch %.4f, rec %.4f, uniformity %.4f, correspondence %.4f) "
             "agreement %.2f cls logit range %.3f lr %.2e %.2f s/step", step, total, record["loss"], record["loss/cls"],
             record["loss/patch"], record["loss/rec"], record["loss/uniformity"], record["loss/correspondence"],
             record["cls_agreement"], record["cls_logit_range"], record["lr"], record["seconds_per_step"])


def _rng_state(sampler: PairSampler) -> dict:
    numpy_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
             "torch": torch.get_rng_state(), "sampler": sampler.state_dict()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(payload: dict, process: Process, sampler: PairSampler) -> None:
    states = payload["rng"]
    if len(states) != process.world_size:
        log.warning("the checkpoint comes from %d rank(s), this run has %d: view sampling and dropout restart "
                    "from fresh generators", len(states), process.world_size)
        sampler.rng = np.random.default_rng([sampler.seed, sampler.rank, int(payload["step"])])
        return
    state = states[process.rank]
    random.setstate(_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    sampler.load_state_dict(state["sampler"])


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _save(out_dir: Path, config: PretrainConfig, model: AliceSSL, optimizer: torch.optim.Optimizer,
          sampler: PairSampler, schedules: Schedules, step: int, best_loss: float, best: bool,
          process: Process) -> None:
    """Write ``last.pt`` (and ``best.pt`` when ``best``) atomically from rank 0, with every rank's RNG states."""
    rng_states, fingerprints = [_rng_state(sampler)], [fingerprint(model)]
    if process.distributed:
        gathered = [None] * process.world_size
        dist.all_gather_object(gathered, (rng_states[0], fingerprints[0]))
        rng_states, fingerprints = [g[0] for g in gathered], [g[1] for g in gathered]
        if len(set(fingerprints)) != 1:
            raise RuntimeError(f"ranks diverged at step {step}: student weights or centres differ ({fingerprints})")
    if process.rank != 0:
        return
    payload = {"kind": CHECKPOINT_KIND, "format_version": FORMAT_VERSION, "alice_version": __version__,
               "torch_version": str(torch.__version__), "config": config.to_dict(), "step": step,
               "schedules": schedules.at(step - 1), "world_size": process.world_size, "best_loss": best_loss,
               "rank_fingerprints": fingerprints, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "rng": rng_states}
    last = runs.checkpoint_path(out_dir)
    atomic_write(last, lambda tmp: torch.save(payload, tmp))
    if best:
        atomic_write(runs.checkpoint_path(out_dir, runs.BEST_CHECKPOINT), lambda tmp: shutil.copyfile(last, tmp))
    log.info("checkpoint at step %d%s", step, " (best so far)" if best else "")
