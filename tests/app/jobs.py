"""Waiting for a background job that a page test started."""

import time
from pathlib import Path

from alice import runs


def wait_until_done(run_dir: Path, seconds: float = 600) -> dict:
    """The run's status once its job has ended, asserting it finished; the job's console output on failure.

    ``seconds`` is generous: a loaded 2-core machine starts torch slowly.
    """
    deadline = time.monotonic() + seconds
    while (runs.read_status(run_dir) or {}).get("state") in runs.ACTIVE_STATES:
        assert time.monotonic() < deadline, (run_dir / runs.CONSOLE_FILE).read_text()
        time.sleep(1)
    status = runs.read_status(run_dir)
    assert status["state"] == "finished", (run_dir / runs.CONSOLE_FILE).read_text()
    return status
