"""The tri-planar viewer: axial, coronal and sagittal views with one shared crosshair.

Reused by every page that shows a volume. Click a voxel in any view (or move a slice slider) to move the
crosshair; pick a named HU window or type W/L (remembered per case); overlay the label map with a legend of the
structures in the current slices; extra overlays (heat maps, colour pictures) and markers (world mm) come from the
calling page.
State keys are described in :mod:`alice.ui.state`.

Clicks use ``on_select="rerun"`` and :func:`alice.ui.state.sync_clicks` at the top of the next run, before any
widget exists, rather than an ``on_select`` callback: the effect is the same (one rerun, state updated before the
widgets are drawn), and a selection delivered through session state (as AppTest does) fires no callback.
"""

from __future__ import annotations

import html

import streamlit as st

from alice import viz
from alice.data.io import Volume
from alice.ui import cache, state
from alice.ui.figures import slice_figure

# The chart's modebar keeps zoom, pan, reset and the PNG download; selection tools make no sense on a voxel grid.
PLOTLY_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"]}
DEFAULT_LABEL_OPACITY = 0.4


def tri_planar_viewer(key: str, image: Volume, label: Volume | None = None,
                      label_names: dict[int, str] | None = None, *, case_key: str | None = None,
                      crosshair_ijk=None,
                      overlays: tuple[viz.HeatOverlay | viz.RGBOverlay | viz.LabelOverlay, ...] = (),
                      markers: tuple[viz.Marker, ...] = (), height_px: int = 380,
                      labels_shown: bool = True) -> viz.VoxelReadout:
    """Draw the viewer and return what the crosshair points at.

    Args:
        key: session-state prefix; distinct for each viewer on a page.
        image: the CT volume (HU).
        label: a label map on the image's grid, or None.
        label_names: label value -> structure name.
        case_key: identifies the case, so the crosshair and window are remembered per case (default: the
            image's file, else a hash of its voxels).
        crosshair_ijk: move the crosshair here (applied when it changes, so the user can click afterwards).
        overlays: heat maps, colour pictures or label maps on the image's grid, drawn over the labels in order.
            Keep their volumes cached between reruns (e.g. ``st.cache_resource``): each new ``Volume`` object is
            hashed once to key the slice cache.
        markers: points in world mm; drawn filled on their own slice and hollow on the others.
        height_px: height of each view.
        labels_shown: whether the label toggle starts on (e.g. off where a heat map should stand out).

    Raises:
        ValueError: a label map or overlay does not share the image's grid.
    """
    for other in (label, *(o.volume for o in overlays)):
        if other is not None and other.shape[:3] != image.shape:
            raise ValueError(f"label map or overlay shape {other.shape} differs from the image's {image.shape}")
    label_names = label_names or {}
    keys = state.ViewerKeys(key)
    ss = st.session_state
    case_key = case_key or (str(image.source) if image.source else cache.volume_token(image))
    state.activate_case(ss, keys, case_key, image.shape, crosshair_ijk)
    state.sync_clicks(ss, keys, image.shape, image.spacing_mm)

    show_labels, opacity = _controls(keys, label is not None, labels_shown)
    view = state.current_view(ss, keys)
    token = cache.render_token(image, label, overlays)
    readout = viz.read_voxel(image, view.ijk, label, label_names)

    widths_mm = [viz.extent_mm(image.shape, image.spacing_mm, plane)[0] for plane in viz.PLANES]
    for plane, column in zip(viz.PLANES, st.columns(widths_mm)):
        axis = viz.PLANE_SPECS[plane].fixed_axis
        index = view.ijk[axis]
        png = cache.slice_png(image, label, overlays, token, plane, index, view.window, opacity)
        size = viz.slice_shape(image.shape, plane)
        title = f"{plane.capitalize()} {'ijk'[axis]}={index} ({'xyz'[axis]} {readout.xyz_mm[axis]:+.1f} mm)"
        fig = slice_figure(png, plane, size, viz.pixel_spacing_mm(image.spacing_mm, plane),
                           viz.ijk_to_pixel(view.ijk, image.shape, plane), title=title,
                           markers=viz.markers_in_plane(markers, image, plane, index), height_px=height_px)
        with column:
            st.plotly_chart(fig, key=keys.chart(plane), on_select="rerun", selection_mode="points",
                            config=PLOTLY_CONFIG, theme=None)
            st.slider(f"{plane.capitalize()} slice ({'ijk'[axis]})", 0, image.shape[axis] - 1,
                      key=keys.slice(plane), on_change=state.on_slider, args=(ss, keys, plane))

    with st.container(key=keys.readout):
        st.markdown(format_readout(readout))
    if show_labels and label is not None:
        visible = sorted({v for plane in viz.PLANES for v in cache.slice_label_values(
            label, token[1], plane, view.ijk[viz.PLANE_SPECS[plane].fixed_axis])})
        st.html(legend_html(visible, label_names, readout.label))
    for overlay in overlays:
        if isinstance(overlay, viz.HeatOverlay):
            st.html(heat_legend_html(overlay))
        elif isinstance(overlay, viz.LabelOverlay):
            st.html(label_overlay_legend_html(overlay))
        else:
            st.html(f"<div style='font-size:0.85rem'><b>{html.escape(overlay.name)}</b></div>")
    return readout


def _controls(keys: state.ViewerKeys, has_label: bool, labels_shown: bool) -> tuple[bool, float]:
    """Window preset, W/L, label toggle and opacity; returns (show labels, opacity: 0 when hidden)."""
    ss = st.session_state
    preset, width, level, labels, opacity = st.columns([2.2, 1, 1, 1, 1.6], vertical_alignment="bottom")
    preset.selectbox("Window", [*viz.WINDOW_PRESETS, viz.CUSTOM_WINDOW], key=keys.preset,
                     format_func=_preset_label, on_change=state.on_preset, args=(ss, keys))
    width.number_input("W (HU)", min_value=1, max_value=10_000, step=10, key=keys.width,
                       on_change=state.on_window, args=(ss, keys))
    level.number_input("L (HU)", min_value=-2_000, max_value=5_000, step=10, key=keys.level,
                       on_change=state.on_window, args=(ss, keys))
    toggled = labels.toggle("Labels", value=labels_shown, key=keys.labels, disabled=not has_label,
                            help=None if has_label else "This case has no label map.")
    show = has_label and toggled
    alpha = opacity.slider("Label opacity", 0.0, 1.0, DEFAULT_LABEL_OPACITY, 0.05, key=keys.opacity,
                           disabled=not show)
    return show, alpha if show else 0.0


def _preset_label(name: str) -> str:
    window = viz.WINDOW_PRESETS.get(name)
    return name if window is None else f"{name} ({window.width:g}/{window.level:g})"


def format_readout(readout: viz.VoxelReadout) -> str:
    """One Markdown line: voxel, world position, HU and structure at the crosshair."""
    x, y, z = readout.xyz_mm
    structure = readout.structure or ("background" if readout.label == 0 else "no label map")
    return (f"**Crosshair** ijk ({', '.join(map(str, readout.ijk))}) · RAS ({x:+.1f}, {y:+.1f}, {z:+.1f}) mm · "
            f"**{readout.value:g} HU** · structure: **{structure}**")


def legend_html(values: list[int], names: dict[int, str], current: int | None) -> str:
    """Colour swatches and names of the structures in the current slices; the one under the crosshair in bold."""
    if not values:
        return "<div style='font-size:0.85rem;opacity:0.7'>No labelled structure in these slices.</div>"
    items = []
    for value in values:
        name = html.escape(names.get(value, f"label {value}"))
        weight = "700" if value == current else "400"
        items.append(f"<span style='display:inline-flex;align-items:center;gap:4px;margin:0 12px 4px 0;"
                     f"font-weight:{weight}'><span style='width:12px;height:12px;border-radius:2px;"
                     f"background:{viz.label_color_hex(value)};display:inline-block'></span>{name}</span>")
    return (f"<div style='font-size:0.85rem;line-height:1.4'><b>Structures in these slices ({len(values)})</b>"
            f"<div style='max-height:11rem;overflow-y:auto'>{''.join(items)}</div></div>")


def label_overlay_legend_html(overlay: viz.LabelOverlay) -> str:
    """The overlay's name and a colour swatch for each value it draws."""
    values = [v for v in overlay.names if overlay.shown is None or v in overlay.shown]
    items = "".join(f"<span style='display:inline-flex;align-items:center;gap:4px;margin:0 12px 4px 0'>"
                    f"<span style='width:12px;height:12px;border-radius:2px;background:{overlay.color_hex(v)};"
                    f"display:inline-block'></span>{html.escape(overlay.names[v])}</span>" for v in values)
    return (f"<div style='font-size:0.85rem;line-height:1.4'><b>{html.escape(overlay.name)}</b>"
            f"<div>{items or 'nothing selected'}</div></div>")


def heat_legend_html(overlay: viz.HeatOverlay) -> str:
    """A colour bar with the overlay's name and value range."""
    low, high = overlay.value_range
    return (f"<div style='font-size:0.85rem'><b>{html.escape(overlay.name)}</b> {low:.3g} "
            "<span style='display:inline-block;width:160px;height:10px;vertical-align:middle;"
            "background:linear-gradient(to right,#000,#f00,#ff0,#fff)'></span>"
            f" {high:.3g}</div>")
