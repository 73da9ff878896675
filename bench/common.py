"""What every benchmark script shares: the machine description and writing its own section of RESULTS.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from pathlib import Path

from alice.atomic import atomic_write_text

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "RESULTS.md"


def machine() -> str:
    """CPU count, CPU model and RAM, read from /proc."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    mem_kb = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
    return (f"nproc {len(os.sched_getaffinity(0))}, {model.group(1).strip() if model else platform.processor()}, "
            f"{int(mem_kb.group(1)) / 2**20:.1f} GiB RAM; Python {platform.python_version()}")


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def write_section(heading: str, text: str) -> None:
    """Replace the section under ``heading`` in RESULTS.md (or append it), keeping every other section."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    section = text.rstrip("\n") + "\n\n"  # a blank line before the next section's heading
    new = pattern.sub(lambda _: section, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + section
    atomic_write_text(RESULTS, new.rstrip("\n") + "\n")


def changed_settings(config: dict) -> str:
    """The losses, masks and views of a pretraining config (nested dict) that differ from the cpu-tiny preset's, as
    key=value (run length, data and file paths left out); "none" when it has the preset's."""
    from alice.config import flatten
    from alice.pretrain.config import PRESETS, PretrainConfig

    # Through the dataclasses, so a key an older run lacks counts with its default (as the run trained).
    preset, own = flatten(PRESETS["cpu-tiny"].to_dict()), flatten(PretrainConfig.from_dict(config).to_dict())
    changed = [f"{key}={own[key]}" for key in sorted(own) if key.split(".")[0] in ("loss", "mask", "views")
               and key != "views.sam_checkpoint" and own[key] != preset.get(key)]
    return ", ".join(changed) or "none"
