"""View mining in the app: the pair shown for the query point, the page's two actions, and a gallery of pairs.

The query point is always the query viewer's crosshair, wherever it came from (a click, "Random point", "Mine a
pair"). The key point follows from it: SAM's match in ``sam`` mode; in the random modes the key point of the last
mined pair, or for a hand-picked point a random foreground point drawn with a seed made from the point (so reruns
show the same pair).

Session-state keys:

- ``mining.request``: (query case key, voxel) the query crosshair should move to, set by the two actions.
- ``mining.mined``: (threshold, :class:`alice.mining.views.ViewPair`) of the last "Mine a pair"; its key point and
  number of tries are shown while the query crosshair stays on its query point.
- widgets of the page: ``mining.mode``, ``mining.cohort``, ``mining.query_case``, ``mining.key_case`` (or
  ``mining.same_case`` in ``same_volume`` mode), ``mining.threshold``, ``mining.random``, ``mining.mine``; of its
  sections here: ``mining.gallery_count``, ``mining.gallery_seed``, ``mining.gallery_csv``, ``mining.query_csv``.
- the two viewers: prefixes ``mining.query_view`` and ``mining.key_view`` (see :mod:`alice.ui.state`).
"""

from __future__ import annotations

import zlib
from collections.abc import MutableMapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from alice import viz
from alice.data.cohort import CaseRecord, Cohort, LoadedCase
from alice.errors import InputError
from alice.mining.views import MiningCase, ViewPair, foreground_points, mine_view_pair, mine_view_pairs, pairs_table
from alice.ui import anatomy
from alice.ui.cases import case_stamp
from alice.ui.crops import THUMB_PX, crops_png, show_grid

REQUEST = "mining.request"
MINED = "mining.mined"
MODE_LABELS = {
    "sam": "sam: same anatomy in two patients (Alice)",
    "random_cross": "random_cross: random points in two patients",
    "same_volume": "same_volume: two crops of one scan",
}


@dataclass(frozen=True)
class ShownPair:
    """The pair the page shows for the current query point.

    Attributes:
        mode: the mining mode.
        key_ijk: the key crop's centre voxel in the key image (None: no match).
        match: SAM's match of the query point in the key case (None without a usable checkpoint).
        tries: query points drawn to mine it (None: picked by hand).
        truth_xyz_mm: where the query point truly is in the key case, when known.
    """

    mode: str
    key_ijk: tuple[int, int, int] | None
    match: anatomy.PointMatch | None
    tries: int | None
    truth_xyz_mm: tuple[float, float, float] | None

    @property
    def key_similarity(self) -> float:
        """SAM similarity of the query point to the key point (the score in ``sam`` mode; NaN without SAM)."""
        if self.match is None or self.key_ijk is None:
            return float("nan")
        return self.match.score if self.mode == "sam" else self.match.similarity_at(self.key_ijk)

    def truth_error_mm(self, key_image) -> float:
        """Distance from the key point to the true position (NaN when either is unknown)."""
        if self.key_ijk is None or self.truth_xyz_mm is None:
            return float("nan")
        return float(np.linalg.norm(key_image.ijk_to_xyz(self.key_ijk) - np.asarray(self.truth_xyz_mm)))

    def overlays(self) -> tuple[viz.HeatOverlay, ...]:
        """The similarity heat map for the key viewer, when there is one."""
        return () if self.match is None or self.match.overlay is None else (self.match.overlay,)

    def markers(self, key_image) -> tuple[viz.Marker, ...]:
        """The key point, SAM's match in ``random_cross`` mode, and the truth when known (world mm).

        In ``same_volume`` mode the truth is the query point itself (and SAM's match lies on it), so it is labelled
        as the query point.
        """
        found = []
        if self.key_ijk is not None:
            found.append(viz.Marker(tuple(key_image.ijk_to_xyz(self.key_ijk)), "match" if self.mode == "sam" else
                                    "key"))
        if self.mode == "random_cross" and self.match is not None and self.match.xyz_mm is not None:
            found.append(viz.Marker(self.match.xyz_mm, "SAM match"))
        if self.truth_xyz_mm is not None:
            found.append(viz.Marker(self.truth_xyz_mm, "query" if self.mode == "same_volume" else "truth"))
        return tuple(found)


def key_choices(case_ids: list[str], query_id: str, mode: str) -> list[str]:
    """Cases the key may come from: the query case itself in ``same_volume`` mode, else every other case."""
    return [query_id] if mode == "same_volume" else [c for c in case_ids if c != query_id]


def requested_ijk(state: MutableMapping, case_key: str) -> tuple[int, int, int] | None:
    """The voxel an action asked the query crosshair to move to, if it was for this case."""
    request = state.get(REQUEST)
    return request[1] if request and request[0] == case_key else None


def request_random_point(state: MutableMapping, case_key: str, image, rng: np.random.Generator | None = None) -> None:
    """Move the query crosshair to a random foreground voxel (Alice's rule: above -125 HU, away from the border).

    Raises:
        InputError: the image has no such voxel.
    """
    ijk = foreground_points(image, 1, rng or np.random.default_rng())[0]
    state[REQUEST] = (case_key, tuple(int(v) for v in ijk))


def mine_pair(state: MutableMapping, sam: anatomy.Sam, mode: str, query: LoadedCase, key: LoadedCase,
              case_key: str, threshold: float) -> ViewPair:
    """Mine one pair from ``query`` to ``key`` as Alice does (random query points, up to 100 tries in ``sam`` mode),
    move the query crosshair to its query point and remember the pair.

    Raises:
        InputError: ``sam`` mode without a usable checkpoint, or an image without foreground.
    """
    cases = []
    for case in (query, key):
        embedding = anatomy.case_embedding(sam, case.record) if mode == "sam" else None
        cases.append(MiningCase(case.record.case_id, case.image, embedding))
    pair = mine_view_pair(cases[0], cases[1:], mode, np.random.default_rng(), threshold)
    state[REQUEST] = (case_key, pair.query_ijk)
    state[MINED] = (threshold, pair)
    return pair


def shown_pair(state: MutableMapping, sam: anatomy.Sam, mode: str, query: LoadedCase, key: LoadedCase,
               query_ijk, threshold: float) -> ShownPair:
    """The pair for the query crosshair (see the module docstring).

    Raises:
        InputError: the checkpoint or an image cannot be read.
    """
    query_ijk = tuple(int(v) for v in query_ijk)
    xyz_mm = query.image.ijk_to_xyz(query_ijk)
    match = anatomy.match_point(sam, query.record, key.record, xyz_mm) if sam.ready else None
    mined = state.get(MINED)
    pair = None
    if mined is not None and mined[0] == threshold:
        candidate = mined[1]
        if (candidate.mode, candidate.query_case, candidate.key_case, candidate.query_ijk) == (
                mode, query.record.case_id, key.record.case_id, query_ijk):
            pair = candidate
    if mode == "sam":
        key_ijk = None if match is None else match.ijk
    elif pair is not None:
        key_ijk = pair.key_ijk
    else:
        key_ijk = random_partner(mode, query.record.case_id, key.record.case_id, query_ijk, key.image)
    return ShownPair(mode, key_ijk, match, None if pair is None else pair.tries,
                     anatomy.true_point(query.record, key.record, xyz_mm))


def random_partner(mode: str, query_id: str, key_id: str, query_ijk, key_image) -> tuple[int, int, int]:
    """A random foreground voxel of the key image, the same one every time for the same query point."""
    seed = [zlib.crc32(f"{mode}|{query_id}|{key_id}".encode()), *(int(v) for v in query_ijk)]
    return tuple(int(v) for v in foreground_points(key_image, 1, np.random.default_rng(seed))[0])


@dataclass(frozen=True)
class Gallery:
    """Mined pairs for display: the table (as ``alice mine`` writes it) and, per pair, a picture of both crops
    (axial) with a caption."""

    table: pd.DataFrame
    thumbnails: list[tuple[bytes, str]]

    def display_table(self) -> pd.DataFrame:
        """The table numbered like the pictures, with the trust signals before the coordinates."""
        first = ["query_case", "key_case", "score", "tries", "accepted"]
        table = self.table[first + [c for c in self.table.columns if c not in first]]
        return table.set_axis(range(1, len(table) + 1)).rename_axis("#").reset_index()


def gallery(sam: anatomy.Sam, cases: list[CaseRecord], mode: str, n: int, seed: int, threshold: float) -> Gallery:
    """``n`` pairs mined among ``cases`` with a seed (each pair: a random query case, a random key case).

    Raises:
        InputError: ``sam`` mode without a usable checkpoint, a cohort too small for the mode, an unreadable image.
    """
    return _gallery(tuple(cases), sam, sam.token, tuple(case_stamp(c) for c in cases), mode, n, seed, threshold)


@st.cache_data(max_entries=32, show_spinner="Mining view pairs...")
def _gallery(_cases: tuple[CaseRecord, ...], _sam: anatomy.Sam, token: tuple | None, stamps: tuple, mode: str,
             n: int, seed: int, threshold: float) -> Gallery:
    images = {record.case_id: anatomy.case_image(record) for record in _cases}
    mining_cases = [MiningCase(record.case_id, images[record.case_id],
                               anatomy.case_embedding(_sam, record) if mode == "sam" else None) for record in _cases]
    pairs = mine_view_pairs(mining_cases, n, mode, seed, threshold)
    thumbnails = []
    for number, pair in enumerate(pairs, start=1):
        picture = crops_png([(images[pair.query_case], pair.query_ijk, "axial", pair.query_case),
                             (images[pair.key_case], pair.key_ijk, "axial", pair.key_case)], panel_px=THUMB_PX)
        thumbnails.append((picture, pair_caption(number, pair, threshold)))
    return Gallery(pairs_table(pairs), thumbnails)


def pair_caption(number: int, pair: ViewPair, threshold: float) -> str:
    """One line under a gallery picture: number, score against the threshold, tries."""
    if pair.mode != "sam":
        return f"#{number} · {pair.mode} (no matching)"
    verdict = "accepted" if pair.accepted else "rejected"
    tries = "1 try" if pair.tries == 1 else f"{pair.tries} tries"
    return f"#{number} · score {pair.score:.2f} {verdict} (≥ {threshold:.2f}) · {tries}"


def show_pair_summary(shown: ShownPair, threshold: float, key_image) -> None:
    """The trust signals in one row: score against the threshold, cycle error, tries, distance to the truth."""
    match = shown.match
    if match is not None and match.no_match:
        st.warning(f"No match: {match.no_match}. SAM matches points inside the body only: pick one there.")
    score_column, cycle_column, tries_column, truth_column = st.columns(4)
    similarity = shown.key_similarity
    if shown.mode == "sam":
        score_column.metric("SAM score", "–" if np.isnan(similarity) else f"{similarity:.3f}",
                            None if np.isnan(similarity) else f"{similarity - threshold:+.3f} vs threshold "
                                                              f"{threshold:.2f}",
                            help="Mean of the local and global cosine similarity at the match; Alice keeps a pair "
                                 "when it reaches the threshold.")
        if not np.isnan(similarity):
            accepted = similarity >= threshold
            score_column.badge("accepted" if accepted else "rejected", color="green" if accepted else "red",
                               icon=":material/check:" if accepted else ":material/close:")
    else:
        score_column.metric("SAM similarity at the key point", "–" if np.isnan(similarity) else f"{similarity:.3f}",
                            help="Not used by this mode (no matching, no threshold): shown to compare with SAM's "
                                 "own match, marked 'SAM match'.")
    cycle = np.nan if match is None else match.cycle_error_mm
    cycle_column.metric("Cycle error", "–" if np.isnan(cycle) else f"{cycle:.1f} mm",
                        help="Match the query point in the key case, then match that point back: the distance to "
                             "the query point. Small means consistent (the grid alone allows a few mm).")
    tries_column.metric("Tries", "picked by hand" if shown.tries is None else str(shown.tries),
                        help="Random query points drawn until one matched with a score at the threshold (at most "
                             "100; without success the best is kept). 'Mine a pair' draws them.")
    error = shown.truth_error_mm(key_image)
    truth_column.metric("Distance between the points" if shown.mode == "same_volume" else "Distance to truth",
                        "unknown" if np.isnan(error) else f"{error:.1f} mm",
                        help="From the key point to where the query point truly lies in the key case. Known for "
                             "the same case, a pseudo-subject and its source, or two pseudo-subjects of one source.")


def show_crops(query_image, query_ijk, key_image, key_ijk) -> None:
    """The two crops side by side, three planes each (the key crop only when there is a key point)."""
    st.subheader("The two crops")
    st.caption(f"{viz.ALICE_CROP_VOXELS}³ voxels around each point at native spacing, in Alice's input window "
               "[-125, 225] HU (what the network sees); air outside the scan. Ticks point at the crop centres.")
    query_column, key_column = st.columns(2)
    query_column.image(crops_png([(query_image, query_ijk, plane, f"query · {plane}") for plane in viz.PLANES]))
    if key_ijk is not None:
        key_column.image(crops_png([(key_image, key_ijk, plane, f"key · {plane}") for plane in viz.PLANES]))


def show_gallery(sam: anatomy.Sam, cohort: Cohort, mode: str, threshold: float) -> None:
    """The gallery section: count and seed, a picture per mined pair, the table and its CSV."""
    st.subheader("Gallery of mined pairs")
    count_column, seed_column = st.columns(2)
    count = count_column.slider("Pairs", 1, 24, 8, key="mining.gallery_count")
    seed = seed_column.number_input("Seed", 0, 2**31 - 1, 0, key="mining.gallery_seed")
    try:
        pairs = gallery(sam, list(cohort.cases), mode, count, seed, threshold)
    except InputError as exc:
        st.error(f"Cannot mine the gallery: {exc}")
        return
    show_grid(pairs.thumbnails, per_row=4)
    st.dataframe(pairs.display_table(), hide_index=True)
    st.download_button("Download the pairs (CSV)", pairs.table.to_csv(index=False), f"pairs-{mode}-{seed}.csv",
                       "text/csv", key="mining.gallery_csv")


def show_landmark_query(sam: anatomy.Sam, cohort: Cohort, query: LoadedCase, point: viz.VoxelReadout) -> None:
    """The landmark query section: the query point's best match in every other case, a table, its CSV, pictures."""
    st.subheader("Find the query point in every case")
    if not sam.ready:
        st.info("Needs a SAM checkpoint (see above).")
        return
    try:
        found = anatomy.landmark_query(sam, query.record, list(cohort.cases), point.xyz_mm)
        thumbnails = anatomy.query_thumbnails(found, list(cohort.cases), query.record, point.ijk)
    except InputError as exc:
        st.error(str(exc))
        return
    st.dataframe(anatomy.query_display(found), hide_index=True)
    st.download_button("Download the matches (CSV)", found.to_csv(index=False),
                       f"matches-{query.record.case_id}.csv", "text/csv", key="mining.query_csv")
    st.caption("Axial slices around each match, soft-tissue window; the first is the query point.")
    show_grid(thumbnails, per_row=10)
