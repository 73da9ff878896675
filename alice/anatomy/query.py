"""Landmark query across a cohort: one point of one case, its best SAM match in every other case."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from alice.anatomy.cache import CaseEmbedding
from alice.anatomy.match import match_points
from alice.data.cohort import CaseRecord
from alice.data.io import Volume
from alice.data.pseudo import true_position

QUERY_COLUMNS = ["query_case", "query_x_mm", "query_y_mm", "query_z_mm", "case", "x_mm", "y_mm", "z_mm", "i", "j",
                 "k", "score", "cycle_error_mm", "truth_error_mm", "no_match_reason"]


def query_cohort(query: CaseRecord, xyz_mm, keys: list[tuple[CaseRecord, Volume]],
                 embed: Callable[[CaseRecord], CaseEmbedding]) -> pd.DataFrame:
    """The best match of one world point of ``query`` in each key case (the query case itself excluded).

    Columns: the query, the match in mm and voxels of the key image, the SAM score, the cycle error (mm), the
    distance to the true position where it is known (pseudo-subjects), and the reason when there is no match.
    """
    xyz_mm = np.asarray(xyz_mm, dtype=np.float64).reshape(1, 3)
    query_embedding = embed(query)
    rows = []
    for record, image in keys:
        if record.case_id == query.case_id:
            continue
        result = match_points(query_embedding, embed(record), xyz_mm)
        matched = result.xyz_mm[0]
        ijk = np.rint(image.xyz_to_ijk(matched)).astype(int) if result.valid[0] else np.full(3, -1)
        truth = true_position(query, record, xyz_mm)
        truth_error = float(np.linalg.norm(matched - truth[0])) if truth is not None and result.valid[0] else np.nan
        reason = result.reasons[0]
        rows.append([query.case_id, *xyz_mm[0].round(2), record.case_id, *matched.round(2), *ijk,
                     round(float(result.score[0]), 4), round(float(result.cycle_error_mm[0]), 2),
                     round(truth_error, 2), "" if reason is None else str(reason)])
    return pd.DataFrame(rows, columns=QUERY_COLUMNS)
