"""Cohorts and cases for the pages: listing that never raises, and loading cached by path and modification time."""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from alice.data.cohort import CaseRecord, Cohort, LoadedCase, load_case, sample_cohort, user_cohort

log = logging.getLogger(__name__)


def list_cohorts() -> tuple[dict[str, Cohort], list[str]]:
    """The cohorts that load, and a message for each that does not (the app shows them and carries on).

    The sample cohort is listed when it loads; the user cohort once it has a case.
    """
    cohorts: dict[str, Cohort] = {}
    problems: list[str] = []
    for name, read in (("sample", sample_cohort), ("user", user_cohort)):
        try:
            cohort = read()
        except Exception as exc:  # noqa: BLE001 - a broken manifest must not take the app down; show why
            log.warning("cannot read the %s cohort: %s", name, exc)
            hint = " (run `alice data prepare-samples` to build it)" if name == "sample" else ""
            problems.append(f"The {name} cohort cannot be read{hint}: {exc}")
            continue
        if cohort.cases or name == "sample":
            cohorts[name] = cohort
    return cohorts, problems


def _mtime_ns(path: Path | None) -> int | None:
    try:
        return None if path is None else path.stat().st_mtime_ns
    except OSError:
        return None  # missing file: load_case reports it with its name


@st.cache_resource(max_entries=4, show_spinner="Loading the case...")
def _load_case(_record: CaseRecord, files: tuple) -> LoadedCase:
    return load_case(_record)


def case_stamp(record: CaseRecord) -> tuple:
    """A small cache key for a case: its id and the path and modification time of each of its files."""
    files = tuple((str(p), _mtime_ns(p)) for p in (record.image, record.label, record.label_names,
                                                    record.landmarks, record.correspondence))
    return record.case_id, files


def load_case_cached(record: CaseRecord) -> LoadedCase:
    """``load_case`` shared across reruns and sessions, reloaded when any of the case's files changes.

    Raises:
        InputError: a file is missing or unreadable (errors are not cached).
    """
    return _load_case(record, case_stamp(record))
