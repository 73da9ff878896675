"""The run-directory contract: the only interface between training jobs and the app.

A run lives in ``<workspace>/runs/<kind>/<timestamp>-<slug>/`` and holds:

- ``config.yaml``: the resolved config of the run.
- ``status.json``: ``state`` (starting, running, stopped, finished, failed), ``pid``, ``step``, ``total``,
  ``message``, ``eta_seconds``, ``updated`` (Unix time); replaced atomically, so a reader never sees half of it.
- ``metrics.jsonl``: one JSON object per logged step.
- ``train.log``: the job's log; ``console.log``: stdout and stderr of a job started by ``launch``.
- ``tensorboard/``: TensorBoard event files.
- ``checkpoints/last.pt`` and ``checkpoints/best.pt``.
- ``STOP``: created by ``request_stop``; the job saves a checkpoint and ends at its next step.

Jobs are fresh ``python -m alice ...`` processes in their own session, so they outlive the app that started them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from alice import paths
from alice.atomic import atomic_write_text
from alice.errors import InputError

CONFIG_FILE = "config.yaml"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
CONSOLE_FILE = "console.log"
STOP_FILE = "STOP"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
STATES = ("starting", "running", "stopped", "finished", "failed")
ACTIVE_STATES = ("starting", "running")
# Reported by ``read_status`` for an active run whose process is gone (killed, crashed without a word).
INTERRUPTED = "interrupted"
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def checkpoint_path(run_dir: str | Path, name: str = LAST_CHECKPOINT) -> Path:
    """Where a run keeps one of its checkpoints."""
    return Path(run_dir) / CHECKPOINTS_DIR / name


def new_run_dir(kind: str, slug: str) -> Path:
    """Create and return a fresh ``runs/<kind>/<YYYYmmdd-HHMMSS>-<slug>/`` (a suffix keeps names unique)."""
    slug = _SLUG.sub("-", slug).strip("-.") or "run"
    root = paths.runs_dir(kind)
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}"
    for n in range(1, 1000):
        candidate = root / (stem if n == 1 else f"{stem}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free run folder name for {stem} in {root}")


def write_config(run_dir: str | Path, config: dict) -> Path:
    """Write the resolved config (plain data) as YAML, atomically."""
    return atomic_write_text(Path(run_dir) / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))


def read_config(run_dir: str | Path) -> dict | None:
    """A run's config as plain data, or None when it has none yet."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text())


def write_status(run_dir: str | Path, state: str, step: int, total: int | None, message: str = "",
                 eta_seconds: float | None = None, pid: int | None = None) -> dict:
    """Replace ``status.json`` atomically; returns what was written.

    Raises:
        ValueError: a state that is not one of ``STATES``.
    """
    if state not in STATES:
        raise ValueError(f"state {state!r} is not one of {STATES}")
    status = {"state": state, "pid": os.getpid() if pid is None else pid, "step": int(step),
              "total": None if total is None else int(total), "message": message,
              "eta_seconds": None if eta_seconds is None else round(float(eta_seconds), 1),
              "updated": round(time.time(), 3)}
    atomic_write_text(Path(run_dir) / STATUS_FILE, json.dumps(status))
    return status


def read_status(run_dir: str | Path) -> dict | None:
    """A run's status, or None when it has none.

    An active state whose process no longer exists is reported as ``interrupted`` (a killed job cannot say so
    itself); ``--resume`` continues such a run from its last checkpoint.
    """
    path = Path(run_dir) / STATUS_FILE
    try:
        status = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if status.get("state") in ACTIVE_STATES and status.get("pid") and not process_alive(status["pid"]):
        status = {**status, "state": INTERRUPTED,
                  "message": f"process {status['pid']} ended without a final status (killed?)"}
    return status


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a zombie counts as ended)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{int(pid)}/stat")
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def append_metrics(run_dir: str | Path, record: dict) -> None:
    """Append one record to ``metrics.jsonl`` (one line, flushed)."""
    with (Path(run_dir) / METRICS_FILE).open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every complete record of ``metrics.jsonl`` (a line being written is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


def training_seconds(metrics: list[dict]) -> float:
    """Summed step time of a run: each record holds the mean step time since the previous record."""
    return sum(m["seconds_per_step"] * (m["step"] - previous["step"])
               for previous, m in zip([{"step": 0}, *metrics], metrics))


def truncate_metrics(run_dir: str | Path, last_step: int) -> None:
    """Drop records after ``last_step`` (written after the checkpoint a resumed run restarts from)."""
    path = Path(run_dir) / METRICS_FILE
    if path.is_file():
        kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= last_step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def request_stop(run_dir: str | Path) -> Path:
    """Ask a running job to save a checkpoint and stop at its next step."""
    path = Path(run_dir) / STOP_FILE
    path.touch()
    return path


def stop_requested(run_dir: str | Path) -> bool:
    """Whether ``request_stop`` was called since the job (re)started."""
    return (Path(run_dir) / STOP_FILE).exists()


def clear_stop(run_dir: str | Path) -> None:
    """Forget an old stop request (a resumed run starts without one)."""
    (Path(run_dir) / STOP_FILE).unlink(missing_ok=True)


def finish_run(run_dir: str | Path, state: str, step: int, total: int, command: str) -> Path:
    """Record how a training loop ended (``finished`` or ``stopped`` on request) in the status and the log, and
    return the last checkpoint; ``command`` is the CLI command that resumes the run, e.g. ``alice pretrain``."""
    message = (f"finished {step} steps" if state == "finished" else
               f"stopped at step {step} on request; continue with `{command} --resume --out {run_dir}`")
    write_status(run_dir, state, step, total, message, eta_seconds=0 if state == "finished" else None)
    logging.getLogger("alice").info("%s", message)
    return checkpoint_path(run_dir)


def list_runs(kind: str) -> list[dict]:
    """Runs of one kind, newest first: ``{"name", "path", "status"}`` (status as ``read_status`` gives it)."""
    root = paths.runs_dir(kind)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir()]
    return [{"name": p.name, "path": p, "status": read_status(p)} for p in sorted(runs, key=lambda p: p.name,
                                                                                     reverse=True)]


def launch(kind: str, argv: list[str], slug: str | None = None) -> tuple[Path, int]:
    """Start ``python -m alice <argv> --out <new run dir>`` detached from the caller.

    Args:
        kind: the runs folder, e.g. ``alice``.
        argv: the CLI arguments without ``--out``, e.g. ``["pretrain", "--preset", "cpu-tiny"]``.
        slug: the run folder's name after the timestamp (default: the command).

    Returns:
        The run folder and the job's process id. The job's stdout and stderr go to ``console.log``.
    """
    run_dir = new_run_dir(kind, slug or argv[0])
    command = [sys.executable, "-m", "alice", *argv, "--out", str(run_dir)]
    write_status(run_dir, "starting", 0, None, message=shlex.join(command), pid=0)
    try:
        with (run_dir / CONSOLE_FILE).open("ab") as console:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                       cwd=paths.REPO_ROOT, start_new_session=True)
    except OSError as exc:
        write_status(run_dir, "failed", 0, None, message=f"could not start {shlex.join(command)}: {exc}", pid=0)
        raise
    status = read_status(run_dir)
    if status is not None and status["state"] == "starting":  # the job may already have reported itself
        write_status(run_dir, "starting", 0, None, message=shlex.join(command), pid=process.pid)
    return run_dir, process.pid


@contextlib.contextmanager
def log_to_file(run_dir: str | Path, logger_name: str = "alice") -> Iterator[logging.Handler]:
    """Copy INFO and above of ``logger_name`` into the run's ``train.log`` while the block runs."""
    logger = logging.getLogger(logger_name)
    handler = logging.FileHandler(Path(run_dir) / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    previous_level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        handler.close()


def load_checkpoint_file(path: str | Path, kind: str, format_version: int) -> dict:
    """A run checkpoint of ``kind`` as plain data (``torch.load(weights_only=True)``).

    Raises:
        InputError: missing or unreadable file, or a checkpoint of another kind or format version.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise InputError(path, f"cannot read as a checkpoint (truncated or not a torch file?): {exc}") from exc
    found = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
    if found != kind:
        raise InputError(path, f"is a checkpoint of kind {found!r}; expected kind {kind!r}")
    if payload.get("format_version") != format_version:
        raise InputError(path, f"has format_version {payload.get('format_version')!r}; this code reads "
                               f"{format_version} (written by alice {payload.get('alice_version', 'unknown')})")
    return payload


def resume_payload(run_dir: str | Path, config: dict, load: Callable[[Path], dict]) -> dict:
    """The last checkpoint of a run to continue, refused when ``config`` (plain data) differs from its own.

    Raises:
        InputError: no checkpoint, or the differing keys named.
    """
    from alice.config import differences

    path = checkpoint_path(run_dir)
    if not path.exists():
        raise InputError(run_dir, "has no checkpoints/last.pt to resume from")
    payload = load(path)
    changed = differences(payload["config"], config)
    if changed:
        raise InputError(run_dir, "cannot resume with a different config; differing keys: " + "; ".join(changed))
    return payload
