"""The run-folder contract: names, status, metrics, stop requests, listing, and launching a detached job."""

import os
import subprocess
import sys
import time

import pytest

from alice import paths, runs


def test_run_folders_are_named_by_time_and_slug_and_never_reused():
    first = runs.new_run_dir("alice", "cpu tiny/1")
    second = runs.new_run_dir("alice", "cpu tiny/1")
    assert first.parent == second.parent == paths.runs_dir("alice")
    assert first.name.endswith("-cpu-tiny-1") and first != second and second.is_dir()


def test_status_is_replaced_whole_and_a_dead_process_reads_as_interrupted(tmp_path):
    written = runs.write_status(tmp_path, "running", 3, 10, "step 3/10", eta_seconds=12.345)
    assert runs.read_status(tmp_path) == written
    assert written["pid"] == os.getpid() and written["eta_seconds"] == 12.3
    assert not list(tmp_path.glob(".status.json*"))  # no temporary file left behind
    with pytest.raises(ValueError, match="not one of"):
        runs.write_status(tmp_path, "paused", 3, 10)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    runs.write_status(tmp_path, "running", 3, 10, pid=ended.pid)
    status = runs.read_status(tmp_path)
    assert status["state"] == runs.INTERRUPTED and str(ended.pid) in status["message"]
    assert runs.read_status(tmp_path / "nothing") is None


def test_metrics_skip_a_partial_line_and_truncate_after_a_step(tmp_path):
    for step in (1, 2, 3):
        runs.append_metrics(tmp_path, {"step": step, "loss": 1.0 / step})
    with (tmp_path / runs.METRICS_FILE).open("a") as f:
        f.write('{"step": 4, "lo')
    assert [r["step"] for r in runs.read_metrics(tmp_path)] == [1, 2, 3]
    runs.truncate_metrics(tmp_path, 2)
    assert [r["step"] for r in runs.read_metrics(tmp_path)] == [1, 2]


def test_stop_requests(tmp_path):
    assert not runs.stop_requested(tmp_path)
    runs.request_stop(tmp_path)
    assert runs.stop_requested(tmp_path)
    runs.clear_stop(tmp_path)
    assert not runs.stop_requested(tmp_path)


def test_list_runs_newest_first_with_status():
    older = runs.new_run_dir("sam", "a")
    newer = paths.runs_dir("sam") / "29991231-235959-b"
    newer.mkdir()
    runs.write_status(newer, "finished", 5, 5, "done")
    listed = runs.list_runs("sam")
    assert [r["path"] for r in listed] == [newer, older]
    assert listed[0]["status"]["state"] == "finished" and listed[1]["status"] is None
    assert runs.list_runs("nothing") == []


def test_launch_starts_a_detached_job_that_reports_in_its_run_folder(tmp_path):
    run_dir, pid = runs.launch("alice", ["pretrain", "--steps", "1", "--set",
                                         f"data.manifest={tmp_path / 'missing.csv'}"], slug="smoke")
    assert run_dir.parent == paths.runs_dir("alice") and run_dir.name.endswith("-smoke")
    if runs.process_alive(pid):
        assert os.getsid(pid) != os.getsid(0)  # its own session: it outlives the app
    deadline = time.monotonic() + 120
    while runs.process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    status = runs.read_status(run_dir)
    assert status["state"] == "failed" and "missing.csv" in status["message"]
    assert "no such manifest file" in (run_dir / runs.CONSOLE_FILE).read_text()
    assert "pretraining failed" in (run_dir / runs.LOG_FILE).read_text()
