"""The viewer component on its own, with the hooks later pages use: a heat-map overlay and markers."""

from streamlit.testing.v1 import AppTest


def viewer_script():
    import numpy as np

    from alice import viz
    from alice.data.io import Volume
    from alice.ui.viewer import tri_planar_viewer

    image = Volume(np.linspace(-1000, 1000, 20 * 16 * 12).reshape(20, 16, 12).astype(np.float32),
                   np.diag([2.0, 2.0, 3.0, 1.0]))
    heat = image.with_array(np.random.default_rng(0).random(image.shape).astype(np.float32))
    tri_planar_viewer("comp", image, overlays=(viz.HeatOverlay(heat, "similarity", threshold=0.5),),
                      markers=(viz.Marker((4.0, 6.0, 18.0), "match"),), crosshair_ijk=(2, 3, 6))


def test_overlay_markers_and_requested_crosshair():
    at = AppTest.from_function(viewer_script, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert any("ijk (2, 3, 6)" in m.value for m in at.markdown)
    specs = [str(chart.proto.spec) for chart in at.get("plotly_chart")]
    assert len(specs) == 3 and all("match" in spec for spec in specs)
    assert any("similarity" in str(h.proto) for h in at.get("html"))
    assert at.toggle(key="comp.labels").disabled  # no label map
