"""Device summary and pipeline stage states."""

from alice import paths, system


def test_device_summary_names_a_device_and_torch():
    summary = system.device_summary()
    assert summary["device"] == "CPU" or summary["cuda"]
    assert summary["torch"] and summary["threads"] >= 1


def test_stages_are_absent_until_their_output_appears_and_later_stages_are_planned(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "CHECKPOINTS_DIR", tmp_path / "checkpoints")
    monkeypatch.setattr(paths, "DEFAULT_SAM_CHECKPOINT", tmp_path / "checkpoints" / "sam_cpu.pt")
    monkeypatch.setattr(paths, "DEFAULT_ALICE_CHECKPOINT", tmp_path / "checkpoints" / "alice_cpu_tiny.pt")
    monkeypatch.delenv("ALICE_SAM_CHECKPOINT", raising=False)
    monkeypatch.delenv("ALICE_PRETRAINED_CHECKPOINT", raising=False)
    stages = system.pipeline_stages()
    assert [s.command for s in stages] == ["alice sam train", "alice sam embed", "alice pretrain --preset cpu-tiny",
                                           "alice embed", "alice index", "alice finetune"]
    assert not any(s.planned for s in stages)
    assert not any(s.present for s in stages)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "alice_cpu_tiny.pt").write_bytes(b"x")
    (tmp_path / "checkpoints" / "sam_cpu.pt").write_bytes(b"x")
    (paths.workspace_dir() / "indexes").mkdir(parents=True)
    present = {s.name for s in system.pipeline_stages() if s.present}
    # An empty index folder does not count.
    assert present == {"Alice checkpoint (pretrained backbone)", "SAM anatomical embedding checkpoint"}


def test_the_sam_checkpoint_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("ALICE_SAM_CHECKPOINT", raising=False)
    monkeypatch.delenv("ALICE_PRETRAINED_CHECKPOINT", raising=False)
    assert paths.sam_checkpoint() == paths.DEFAULT_SAM_CHECKPOINT
    monkeypatch.setenv("ALICE_SAM_CHECKPOINT", str(tmp_path / "mine.pt"))
    assert paths.sam_checkpoint() == tmp_path / "mine.pt"
    assert system.pipeline_stages()[0].path == tmp_path / "mine.pt"


def test_the_existing_commands_are_listed_as_available():
    assert {"alice sam train", "alice sam embed", "alice mine", "alice eval landmarks", "alice pretrain",
            "alice export-backbone"} <= set(system.AVAILABLE_COMMANDS)
