"""Files a user hands to the app: stored safely inside the workspace, then converted into the user cohort.

An upload is written under ``<workspace>/uploads/<random>/<sanitised name>`` (never outside, whatever its name),
read from there by :func:`alice.data.cohort.add_user_case`, and removed once the case is converted: the user
cohort keeps its own canonical copy. Local paths on the server are only read.
"""

from __future__ import annotations

import logging
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from alice import paths
from alice.atomic import atomic_write
from alice.data.cohort import CaseRecord, add_user_case
from alice.data.io import NIFTI_SUFFIXES
from alice.errors import InputError

log = logging.getLogger(__name__)

MAX_UPLOAD_MB = 1024
# .nhdr is left out: a detached NRRD header needs its data file beside it.
VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd")
LABEL_NAMES_SUFFIXES = (".csv",)


@dataclass(frozen=True)
class Upload:
    """A file received by the app: its name as the user's browser gave it, and its bytes."""

    name: str
    data: bytes

    @classmethod
    def of(cls, file) -> Upload | None:
        """From any object with ``name`` and ``getvalue()`` (e.g. Streamlit's UploadedFile); None stays None."""
        return None if file is None else cls(file.name, file.getvalue())


def uploads_dir() -> Path:
    """Where uploads wait to be converted."""
    return paths.workspace_dir() / "uploads"


def sanitise_filename(filename: str) -> str:
    """The last path component with unsafe characters replaced; never empty, never hidden, never a path."""
    name = re.split(r"[/\\]", filename)[-1]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".-_")
    return name[-128:] or "upload"


def store_upload(filename: str, data: bytes, max_mb: float = MAX_UPLOAD_MB,
                 suffixes: tuple[str, ...] = VOLUME_SUFFIXES) -> Path:
    """Write an uploaded file atomically into its own folder under :func:`uploads_dir`.

    Args:
        filename: the name the user gave (may hold path parts or odd characters; only a safe base name is kept).
        data: the file's bytes.
        max_mb: largest accepted size in MB.
        suffixes: accepted endings (lower case).

    Returns:
        The stored file's path.

    Raises:
        InputError: too large, or an unsupported file type (the message names the file).
    """
    size_mb = len(data) / 2**20
    if size_mb > max_mb:
        raise InputError(filename, f"is {size_mb:.1f} MB; the upload limit is {max_mb:g} MB")
    safe = sanitise_filename(filename)
    if not safe.lower().endswith(suffixes):
        raise InputError(filename, f"unsupported file type; expected {', '.join(suffixes)}")
    root = uploads_dir().resolve()
    target = (root / uuid.uuid4().hex / safe).resolve()
    if not target.is_relative_to(root):  # cannot happen after sanitising; kept as the last line of defence
        raise InputError(filename, "file name points outside the upload folder")
    try:
        atomic_write(target, lambda tmp: tmp.write_bytes(data))
    except BaseException:
        shutil.rmtree(target.parent, ignore_errors=True)  # the folder is this upload's own
        raise
    log.info("stored upload %s (%.1f MB) at %s", filename, size_mb, target)
    return target


def add_case(image: Upload | str | Path | None, label: Upload | str | Path | None = None,
             label_names: Upload | str | Path | None = None, case_id: str | None = None,
             max_mb: float = MAX_UPLOAD_MB) -> CaseRecord:
    """Add a case to the user cohort from uploads or from local paths on the server.

    Uploads are stored with :func:`store_upload` and removed after the conversion, whether it worked or not.
    Blank strings (empty form fields) count as not given.

    Raises:
        InputError: no image, or any problem with any of the files (naming the file).
    """
    stored: list[Path] = []

    def local(item, suffixes):
        if isinstance(item, str):
            item = item.strip() or None
        if item is None:
            return None
        if isinstance(item, Upload):
            stored.append(store_upload(item.name, item.data, max_mb, suffixes))
            return stored[-1]
        path = Path(item).expanduser()
        if not path.exists():
            raise InputError(path, "no such file or folder on the server")
        return path

    try:
        image_path = local(image, VOLUME_SUFFIXES)
        if image_path is None:
            raise InputError(None, "no CT image given: upload one or give its path")
        # Without a case id, add_user_case takes it from the (sanitised) file name.
        return add_user_case(image_path, local(label, VOLUME_SUFFIXES), (case_id or "").strip() or None,
                             local(label_names, LABEL_NAMES_SUFFIXES))
    finally:
        for path in stored:
            shutil.rmtree(path.parent, ignore_errors=True)
