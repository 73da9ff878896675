"""The `alice` CLI: help everywhere, JSON output, and one clear error line with a non-zero exit for bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from alice.cli import main
from tests.conftest import write_nifti


@pytest.mark.parametrize("argv", [["--help"], ["data", "--help"], ["data", "prepare-samples", "--help"],
                                  ["data", "pseudo-subjects", "--help"], ["data", "info", "--help"]])
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "usage: alice" in capsys.readouterr().out


def test_info_json_describes_a_volume_and_its_labels(tmp_path, capsys):
    labels = np.zeros((6, 5, 4), np.uint8)
    labels[1:3, 1:3, 1:3] = 4
    image = write_nifti(tmp_path / "a.nii.gz", np.full((6, 5, 4), -100, np.int16), np.diag([-1.0, 1, 2, 1]))
    label = write_nifti(tmp_path / "l.nii.gz", labels, np.diag([-1.0, 1, 2, 1]))
    names = tmp_path / "names.csv"
    names.write_text("value,name\n4,liver\n")
    assert main(["data", "info", str(image), "--label", str(label), "--label-names", str(names), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [6, 5, 4] and info["spacing_mm"] == [1.0, 1.0, 2.0]
    assert info["orientation"] == "RAS" and info["stored_orientation"] == "LAS"
    assert info["value_range"] == [-100.0, -100.0]
    assert info["labels"] == {"4": {"name": "liver", "voxels": 8}}


def test_bad_input_exits_non_zero_with_one_message(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    result = subprocess.run([sys.executable, "-m", "alice", "data", "info", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"error: {bad}:")
    assert "Traceback" not in result.stderr
