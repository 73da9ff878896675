"""View-mining helpers of the app that need no Streamlit server: key choices, random partners, captions, pictures."""

import io

import numpy as np
import pandas as pd
from PIL import Image

from alice import viz
from alice.data.io import Volume
from alice.mining.views import ViewPair
from alice.ui import anatomy, mining
from alice.ui.crops import GAP_PX, crops_png


def body(shape=(30, 24, 20), spacing_mm=(2.0, 2.0, 3.0)) -> Volume:
    """Soft tissue in a box of air."""
    hu = np.full(shape, -1000, np.int16)
    hu[5:-5, 5:-5, 4:-4] = 40
    return Volume(hu, np.diag([*spacing_mm, 1.0]))


def pair(mode="sam", score=0.8, tries=3, accepted=True) -> ViewPair:
    return ViewPair(mode, "a", "b", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (1, 2, 3), (4, 5, 6), score, tries, accepted)


def test_the_key_is_another_case_except_in_same_volume_mode():
    assert mining.key_choices(["a", "b", "c"], "b", "sam") == ["a", "c"]
    assert mining.key_choices(["a", "b", "c"], "b", "random_cross") == ["a", "c"]
    assert mining.key_choices(["a", "b", "c"], "b", "same_volume") == ["b"]
    assert mining.key_choices(["a"], "a", "sam") == []


def test_a_random_partner_is_foreground_and_the_same_for_the_same_point():
    image = body()
    first = mining.random_partner("random_cross", "a", "b", (10, 10, 10), image)
    assert first == mining.random_partner("random_cross", "a", "b", (10, 10, 10), image)
    assert image.array[first] > -125
    others = {mining.random_partner("random_cross", "a", "b", (10, 10, k), image) for k in range(5, 15)}
    assert len(others) > 1


def test_random_point_requests_a_foreground_voxel_for_its_case():
    state = {}
    image = body()
    mining.request_random_point(state, "sample/a", image, np.random.default_rng(0))
    ijk = mining.requested_ijk(state, "sample/a")
    assert image.array[ijk] > -125
    assert mining.requested_ijk(state, "sample/b") is None


def test_captions_and_the_gallery_table_put_the_trust_signals_first():
    assert mining.pair_caption(2, pair(score=0.812, tries=1), 0.7) == "#2 · score 0.81 accepted (≥ 0.70) · 1 try"
    assert "rejected" in mining.pair_caption(1, pair(score=0.5, tries=100, accepted=False), 0.7)
    assert mining.pair_caption(3, pair("random_cross", float("nan"), 1), 0.7) == "#3 · random_cross (no matching)"
    table = pd.DataFrame([pair().to_row(), pair(tries=7).to_row()])
    shown = mining.Gallery(table, []).display_table()
    assert list(shown.columns[:6]) == ["#", "query_case", "key_case", "score", "tries", "accepted"]
    assert list(shown["#"]) == [1, 2] and set(shown.columns) == {"#", *table.columns}


def test_a_crop_picture_has_one_panel_per_view_at_physical_aspect():
    image = body()
    png = crops_png([(image, (15, 12, 10), plane, plane) for plane in viz.PLANES], size_voxels=16, panel_px=100)
    picture = Image.open(io.BytesIO(png))
    # Axial 16 x 16 voxels of 2 x 2 mm: square; coronal and sagittal rows are 3 mm: 100 px tall, 67 px wide.
    assert picture.mode == "RGB" and picture.height > 100
    assert picture.width == 100 + 67 + 67 + 2 * GAP_PX


def test_markers_name_the_key_point_sam_match_and_truth_per_mode():
    image = body()
    match = anatomy.PointMatch((9, 9, 9), (18.0, 18.0, 27.0), 0.9, 2.0, None, None)
    truth = (20.0, 20.0, 30.0)
    names = {mode: [m.text for m in mining.ShownPair(mode, (10, 10, 10), match, None, truth).markers(image)]
             for mode in ("sam", "random_cross", "same_volume")}
    assert names == {"sam": ["match", "truth"], "random_cross": ["key", "SAM match", "truth"],
                     "same_volume": ["key", "query"]}
    shown = mining.ShownPair("sam", (10, 10, 10), match, None, truth)
    assert shown.key_similarity == 0.9 and shown.truth_error_mm(image) == 0.0
    assert np.isnan(mining.ShownPair("sam", None, None, None, None).key_similarity)
