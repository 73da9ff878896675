"""Where things live: the shipped sample cohort and the user's workspace (one place for every default path)."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_COHORT_DIR = REPO_ROOT / "data" / "sample_cohort"
SAMPLE_MANIFEST = SAMPLE_COHORT_DIR / "manifest.csv"
# Checkpoints shipped with the repository (each with a model card beside it).
CHECKPOINTS_DIR = REPO_ROOT / "checkpoints"
DEFAULT_SAM_CHECKPOINT = CHECKPOINTS_DIR / "sam_cpu.pt"
DEFAULT_ALICE_CHECKPOINT = CHECKPOINTS_DIR / "alice_cpu_tiny.pt"


def sam_checkpoint() -> Path:
    """The SAM checkpoint the app uses: ``ALICE_SAM_CHECKPOINT`` when set, else ``DEFAULT_SAM_CHECKPOINT``."""
    override = os.environ.get("ALICE_SAM_CHECKPOINT")
    return Path(override).expanduser().resolve() if override else DEFAULT_SAM_CHECKPOINT


def alice_checkpoint() -> Path:
    """The Alice checkpoint the app uses: ``ALICE_PRETRAINED_CHECKPOINT`` when set, else ``DEFAULT_ALICE_CHECKPOINT``."""
    override = os.environ.get("ALICE_PRETRAINED_CHECKPOINT")
    return Path(override).expanduser().resolve() if override else DEFAULT_ALICE_CHECKPOINT


def workspace_dir() -> Path:
    """The folder for everything the user adds or the pipeline produces (``ALICE_WORKSPACE`` overrides it)."""
    return Path(os.environ.get("ALICE_WORKSPACE", REPO_ROOT / "workspace")).resolve()


def user_cohort_dir() -> Path:
    """Cases the user added through the app or the CLI live here, converted; sources are never touched."""
    return workspace_dir() / "user_cohort"


def runs_dir(kind: str) -> Path:
    """Training runs of one kind (``sam``, ``alice``, ...) live in ``<workspace>/runs/<kind>/``."""
    return workspace_dir() / "runs" / kind
