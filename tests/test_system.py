"""Device summary and pipeline stage states."""

from alice import paths, system


def test_device_summary_names_a_device_and_torch():
    summary = system.device_summary()
    assert summary["device"] == "CPU" or summary["cuda"]
    assert summary["torch"] and summary["threads"] >= 1


def test_stages_are_planned_absent_and_turn_present_when_their_output_appears(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path)
    stages = system.pipeline_stages()
    assert [s.command for s in stages] == ["alice sam train", "alice sam embed", "alice pretrain",
                                           "alice embed / alice index", "alice finetune"]
    assert all(s.planned and not s.present for s in stages)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "alice.pt").write_bytes(b"x")
    (paths.workspace_dir() / "index").mkdir(parents=True)
    present = {s.name for s in system.pipeline_stages() if s.present}
    assert present == {"Alice checkpoint (pretrained backbone)"}  # an empty index folder does not count
