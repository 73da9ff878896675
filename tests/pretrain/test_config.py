"""The pretraining config: presets, YAML, --set precedence, unknown keys, types, refusals naming the values."""

import pytest
import torch
import yaml

from alice.errors import InputError
from alice.config import differences
from alice.pretrain.config import PRESETS, PretrainConfig, load_config, resolve_config, save_config


def test_presets_are_valid_and_cpu_tiny_is_small():
    for name in PRESETS:
        load_config(name)
    tiny = PRESETS["cpu-tiny"]
    assert (tiny.model.roi, tiny.model.feature_size) == (48, 24)
    paper = PRESETS["paper"]
    assert (paper.model.roi, paper.mask.cell_voxels, paper.mask.ratio) == (64, 16, 0.75)
    assert (paper.loss.kv_source, paper.loss.target_attn, paper.views.mode) == ("teacher_encoder", "ema", "sam")
    assert (paper.loss.teacher_temp_start, paper.loss.teacher_temp, paper.loss.student_temp) == (0.008, 0.01, 0.1)
    assert paper.optim.min_lr < paper.optim.lr


def test_precedence_is_preset_then_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"optim": {"lr": 2e-4, "min_lr": 1e-6}, "run": {"steps": 30}}))
    config = load_config("cpu-tiny", path, ["run.steps=40", "loss.cafa=false", "optim.lr=1e-4",
                                            "views.hu_window=[-100, 200]"])
    assert config.optim.lr == 1e-4  # --set beats the file
    assert config.optim.min_lr == 1e-6  # the file beats the preset
    assert config.run.steps == 40 and config.loss.cafa is False
    assert config.views.hu_window == (-100.0, 200.0)
    assert config.model == PRESETS["cpu-tiny"].model


def test_yaml_round_trip_and_plain_data_for_checkpoints(tmp_path):
    config = load_config("paper", overrides=["views.mode=random_cross"])
    path = save_config(config, tmp_path / "config.yaml")
    assert load_config("cpu-tiny", path) == config
    data = config.to_dict()
    torch.save({"config": data}, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["config"] == data
    assert PretrainConfig.from_dict(data) == config


def test_numbers_in_yaml_exponent_form_and_ints_for_floats_are_accepted():
    config = load_config("cpu-tiny", overrides=["optim.lr=1e-3", "optim.clip_grad=3"])
    assert config.optim.lr == 1e-3 and isinstance(config.optim.clip_grad, float)


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key(s) ['optim.lrr']"),
    ("optimiser.lr=1", "'optimiser' is not a config section"),
    ("run.steps=ten", "run.steps='ten' must be a number"),
    ("run.steps=2.5", "must be a whole number"),
    ("loss.cafa=maybe", "loss.cafa='maybe' must be true or false"),
    ("views.hu_window=[1]", "must have 2 items"),
    ("lr", "is not key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(InputError) as info:
        load_config("cpu-tiny", overrides=[override])
    assert message in str(info.value)


@pytest.mark.parametrize("overrides, messages", [
    (["optim.min_lr=1e-3", "optim.lr=5e-4"], ["optim.min_lr=0.001 must be at least 0 and below the peak optim.lr=0.0005"]),
    (["views.hu_window=[225, -125]"], ["views.hu_window=[225, -125] is impossible"]),
    (["mask.cell_voxels=20"], ["model.roi=48 is not a multiple of mask.cell_voxels=20"]),
    (["model.roi=40"], ["roi 40 must be a positive multiple of patch_size 2 * 2**3 = 16"]),
    (["views.mode=sideways", "mask.ratio=1.0"], ["views.mode='sideways' is not one of", "mask.ratio=1 is not in [0, 1)"]),
    (["loss.kv_source=teacher", "loss.target_attn=copy"], ["loss.kv_source='teacher'", "loss.target_attn='copy'"]),
    (["loss.target_queries=both"], ["loss.target_queries='both' is not one of ['teacher', 'student']"]),
    (["model.head_patch_out_dim=128"], ["model.head_out_dim=256 must equal model.head_patch_out_dim=128"]),
    (["loss.correspondence_weight=-1", "loss.correspondence_temp=0", "loss.correspondence_bank=-2"],
     ["loss.correspondence_weight=-1 must not be negative", "loss.correspondence_temp=0 must be positive",
      "loss.correspondence_bank=-2 must not be negative"]),
])
def test_inconsistent_configs_are_refused_at_start_naming_the_values(overrides, messages):
    with pytest.raises(InputError) as info:
        load_config("cpu-tiny", overrides=overrides)
    for message in messages:
        assert message in str(info.value)


def test_unknown_preset_and_bad_files_are_refused(tmp_path):
    with pytest.raises(InputError, match="unknown preset 'gpu'"):
        load_config("gpu")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(InputError, match="must hold a mapping"):
        load_config("cpu-tiny", bad)
    with pytest.raises(InputError, match="cannot read"):
        load_config("cpu-tiny", tmp_path / "missing.yaml")
    bad.write_text("run: {steps: 3\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config("cpu-tiny", bad)


def test_differences_name_the_dotted_keys():
    old = PRESETS["cpu-tiny"].to_dict()
    new = load_config("cpu-tiny", overrides=["optim.lr=1e-4", "model.feature_size=12",
                                             "model.num_heads=[3, 6, 12, 12]"]).to_dict()
    changed = differences(old, new)
    assert [c.split(":")[0] for c in changed] == ["model.feature_size", "model.num_heads", "optim.lr"]
    assert "optim.lr: 0.0005 -> 0.0001" in changed


def test_resolve_fills_the_default_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("ALICE_SAM_CHECKPOINT", str(tmp_path / "sam.pt"))
    resolved = resolve_config(PRESETS["cpu-tiny"])
    assert resolved.data.manifest.endswith("manifest.csv")
    assert resolved.views.sam_checkpoint == str(tmp_path / "sam.pt")
