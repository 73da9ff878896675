"""Pictures of Alice's crops: centre planes of cube crops around points, side by side in one PNG.

Crops are cut in voxels at native spacing, as Alice cuts them, and shown at their physical aspect in Alice's input
window ([-125, 225] HU), i.e. what the network sees. Each panel carries its title, the orientation letters of the
display convention (:mod:`alice.viz`) and ticks pointing at the crop centre. Pictures are cached by volume content,
centre and settings.
"""

from __future__ import annotations

import io

import streamlit as st
from PIL import Image, ImageDraw, ImageFont

from alice import viz
from alice.data.io import Volume
from alice.ui import cache
from alice.ui.figures import CROSSHAIR_COLOR, LETTER_COLOR

PANEL_PX = 176  # longest side of one plane's picture
THUMB_PX = 120
GAP_PX = 12
TICK_PX = (4, 12)  # centre ticks run from 4 to 12 pixels away from the centre
BACKGROUND = (0, 0, 0)
TITLE_COLOR = (224, 224, 224)

View = tuple[Volume, tuple[int, int, int], str, str]  # image, centre voxel, plane, title


def crops_png(views: list[View], *, size_voxels: int = viz.ALICE_CROP_VOXELS, window: viz.Window = viz.ALICE_WINDOW,
              panel_px: int = PANEL_PX) -> bytes:
    """One PNG with a panel per view: the plane through the centre of a cube crop of ``size_voxels`` per side.

    Args:
        views: (image, centre voxel, plane, title) per panel, left to right.
        size_voxels: crop edge in voxels (outside the image: air).
        window: HU window of the panels.
        panel_px: longest side of each panel in pixels.
    """
    keys = tuple((cache.volume_token(image), tuple(int(v) for v in ijk), plane, title)
                 for image, ijk, plane, title in views)
    return _crops_png(tuple(image for image, *_ in views), keys, size_voxels, window, panel_px)


@st.cache_data(max_entries=512, show_spinner=False)
def _crops_png(_images: tuple[Volume, ...], keys: tuple, size_voxels: int, window: viz.Window,
               panel_px: int) -> bytes:
    panels = [crop_panel(image, ijk, plane, title, size_voxels, window, panel_px)
              for image, (_, ijk, plane, title) in zip(_images, keys)]
    height = max(p.height for p in panels)
    width = sum(p.width for p in panels) + GAP_PX * (len(panels) - 1)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    left = 0
    for panel in panels:
        canvas.paste(panel, (left, 0))
        left += panel.width + GAP_PX
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def crop_panel(image: Volume, ijk, plane: str, title: str, size_voxels: int, window: viz.Window,
               panel_px: int) -> Image.Image:
    """One plane of one crop: title strip, windowed slice at its physical aspect, letters and centre ticks."""
    picture = viz.crop_planes(image.array, ijk, size_voxels)[plane]
    rows, cols = picture.shape
    row_mm, col_mm = viz.pixel_spacing_mm(image.spacing_mm, plane)
    scale = panel_px / max(rows * row_mm, cols * col_mm)
    width, height = max(1, round(cols * col_mm * scale)), max(1, round(rows * row_mm * scale))
    gray = viz.window_to_uint8(picture, window.width, window.level)
    # Nearest neighbour: voxels stay visible as voxels.
    slice_image = Image.fromarray(viz.gray_to_rgb(gray)).resize((width, height), Image.Resampling.NEAREST)

    font_px = 13 if panel_px >= PANEL_PX else 11
    font = ImageFont.load_default(size=font_px)
    title_px = font_px + 7
    panel = Image.new("RGB", (width, height + title_px), BACKGROUND)
    panel.paste(slice_image, (0, title_px))
    draw = ImageDraw.Draw(panel)
    draw.text((3, 2), title, fill=TITLE_COLOR, font=font)

    row, col = viz.ijk_to_pixel((size_voxels // 2,) * 3, (size_voxels,) * 3, plane)
    cx, cy = (col + 0.5) * width / cols, title_px + (row + 0.5) * height / rows
    tick = _rgb(CROSSHAIR_COLOR)
    near, far = TICK_PX
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        draw.line([(cx + dx * near, cy + dy * near), (cx + dx * far, cy + dy * far)], fill=tick, width=2)

    edges = viz.PLANE_SPECS[plane].edges
    middle_y = title_px + height / 2
    for letter, x, y, anchor in ((edges["left"], 2, middle_y, "lm"), (edges["right"], width - 2, middle_y, "rm"),
                                 (edges["top"], width / 2, title_px + 1, "mt"),
                                 (edges["bottom"], width / 2, title_px + height - 1, "mb")):
        box = draw.textbbox((x, y), letter, font=font, anchor=anchor)
        draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
        draw.text((x, y), letter, fill=_rgb(LETTER_COLOR), font=font, anchor=anchor)
    return panel


def show_grid(pictures: list[tuple[bytes, str]], per_row: int = 4) -> None:
    """Pictures with captions in rows of ``per_row`` columns."""
    for start in range(0, len(pictures), per_row):
        for column, (picture, caption) in zip(st.columns(per_row), pictures[start:start + per_row]):
            column.image(picture, caption=caption)


def _rgb(color: str) -> tuple[int, int, int]:
    """``#rrggbb`` or ``rgba(r, g, b, a)`` -> (r, g, b)."""
    if color.startswith("#"):
        return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))
    return tuple(int(float(v)) for v in color[color.index("(") + 1:color.index(")")].split(",")[:3])
