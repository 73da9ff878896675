"""Uploads: size limit, file types, names that try to leave the upload folder, atomic writes, adding a case."""

from pathlib import Path

import numpy as np
import pytest

from alice import paths
from alice.data.cohort import user_cohort
from alice.data.uploads import Upload, add_case, sanitise_filename, store_upload, uploads_dir
from alice.errors import InputError
from tests.conftest import write_nifti


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_stores_inside_the_upload_folder():
    stored = store_upload("scan.nii.gz", b"abc")
    assert stored.read_bytes() == b"abc"
    assert stored.is_relative_to(uploads_dir().resolve())
    assert stored.name == "scan.nii.gz"


def test_refuses_a_file_over_the_limit_and_names_it():
    with pytest.raises(InputError, match=r"big\.nii\.gz.*limit is 1 MB"):
        store_upload("big.nii.gz", b"\0" * (2**20 + 1), max_mb=1)
    assert files_under(uploads_dir()) == []


@pytest.mark.parametrize("name", ["notes.txt", "scan.gz", "scan.nii.zip", "image.nhdr", ".nii.gz"])
def test_refuses_unsupported_types(name):
    with pytest.raises(InputError, match="unsupported file type"):
        store_upload(name, b"abc")
    assert files_under(uploads_dir()) == []


@pytest.mark.parametrize("name", ["../../evil.nii.gz", "..\\..\\evil.nii.gz", "/etc/evil.nii.gz",
                                  "a/../../../evil.nii.gz", "..evil.nii.gz"])
def test_names_that_climb_out_stay_inside(name, tmp_path, monkeypatch):
    workspace = tmp_path / "deep" / "er" / "workspace"
    monkeypatch.setenv("ALICE_WORKSPACE", str(workspace))
    stored = store_upload(name, b"abc")
    assert stored.parent.parent == uploads_dir().resolve()  # uploads/<random>/<name>, nowhere else
    assert stored.name == "evil.nii.gz"
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [stored]


def test_sanitise_keeps_a_plain_base_name():
    assert sanitise_filename("my scan (1).nii.gz") == "my_scan__1_.nii.gz"
    assert sanitise_filename("") == "upload"


def test_a_failed_write_leaves_nothing(monkeypatch):
    def write_half_then_fail(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        store_upload("scan.nii.gz", b"x" * 1000)
    assert files_under(uploads_dir()) == []


def _tiny_ct(tmp_path: Path) -> tuple[Path, Path]:
    image = (np.arange(6 * 5 * 4).reshape(6, 5, 4) - 60).astype(np.int16)
    label = np.zeros((6, 5, 4), np.uint8)
    label[1:3, 1:3, 1:3] = 1
    affine = np.diag([-1.5, 1.5, 2.0, 1.0])
    return (write_nifti(tmp_path / "tiny.nii.gz", image, affine),
            write_nifti(tmp_path / "tiny_label.nii.gz", label, affine))


def test_add_case_from_uploads_converts_and_removes_the_upload(tmp_path):
    image, label = _tiny_ct(tmp_path)
    record = add_case(Upload("../tiny.nii.gz", image.read_bytes()), Upload("tiny_label.nii.gz", label.read_bytes()))
    assert record.case_id == "tiny"
    assert user_cohort().case_ids == ["tiny"]
    assert record.image.is_relative_to(paths.workspace_dir())
    assert files_under(uploads_dir()) == []


def test_add_case_from_a_path_only_reads_the_source(tmp_path):
    image, _ = _tiny_ct(tmp_path)
    before = (image.read_bytes(), image.stat().st_mtime_ns)
    record = add_case(str(image), "", "  ", case_id=" mine ")
    assert record.case_id == "mine"
    assert (image.read_bytes(), image.stat().st_mtime_ns) == before


def test_add_case_without_an_image_or_with_a_missing_path_says_so(tmp_path):
    with pytest.raises(InputError, match="no CT image"):
        add_case(None)
    with pytest.raises(InputError, match="no such file"):
        add_case(str(tmp_path / "missing.nii.gz"))
    with pytest.raises(InputError, match="broken.nii.gz"):
        add_case(Upload("broken.nii.gz", b"not a nifti"))
    assert files_under(uploads_dir()) == []
