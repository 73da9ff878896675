"""Caches for the viewer: a content token per volume and the rendered slice PNGs.

Volumes are treated as immutable once loaded: a token is computed once per ``Volume`` object (a full hash of its
voxels and grid) and remembered for the object's lifetime, so cache keys never hash megabytes per rerun.
"""

from __future__ import annotations

import hashlib
import weakref

import numpy as np
import streamlit as st

from alice import viz
from alice.data.io import Volume
from alice.ui.figures import png_data_uri

_TOKENS: weakref.WeakKeyDictionary[Volume, str] = weakref.WeakKeyDictionary()


def volume_token(volume: Volume) -> str:
    """A short content hash of a volume (shape, dtype, affine and voxels), memoised per object."""
    token = _TOKENS.get(volume)
    if token is None:
        digest = hashlib.blake2b(digest_size=16)
        array = np.ascontiguousarray(volume.array)
        digest.update(f"{array.shape}|{array.dtype}".encode())
        digest.update(np.ascontiguousarray(volume.affine, dtype=np.float64).tobytes())
        digest.update(memoryview(array).cast("B"))
        token = digest.hexdigest()
        _TOKENS[volume] = token
    return token


def render_token(image: Volume, label: Volume | None,
                 overlays: tuple[viz.HeatOverlay | viz.RGBOverlay | viz.LabelOverlay, ...]) -> tuple:
    """Everything that identifies what a slice picture is drawn from, as a small hashable key."""
    return (volume_token(image), None if label is None else volume_token(label),
            tuple(_overlay_token(o) for o in overlays))


def _overlay_token(overlay: viz.HeatOverlay | viz.RGBOverlay | viz.LabelOverlay) -> tuple:
    if isinstance(overlay, viz.HeatOverlay):
        return volume_token(overlay.volume), overlay.opacity, *overlay.value_range, overlay.threshold
    if isinstance(overlay, viz.LabelOverlay):
        colours = None if overlay.colours is None else overlay.colours.tobytes()
        return volume_token(overlay.volume), overlay.opacity, overlay.shown, overlay.contour, colours
    return volume_token(overlay.volume), overlay.opacity


@st.cache_data(max_entries=600, show_spinner=False)
def slice_png(_image: Volume, _label: Volume | None, _overlays: tuple,
              token: tuple, plane: str, index: int, window: viz.Window, label_opacity: float) -> str:
    """The composed slice as a PNG data URI; cached by ``token`` (see :func:`render_token`), not by the arrays."""
    label = None if _label is None else _label.array
    overlays = tuple((o.volume.array, o) for o in _overlays)
    rgb = viz.compose_slice(_image.array, plane, index, window, label, label_opacity, overlays)
    return png_data_uri(rgb)


@st.cache_data(max_entries=600, show_spinner=False)
def slice_label_values(_label: Volume, token: str, plane: str, index: int) -> tuple[int, ...]:
    """Label values (without 0) present in one slice, for the legend."""
    return viz.slice_label_values(_label.array, plane, index)
