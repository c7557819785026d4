"""The per-group width chart (dense vs kept channels) as a PNG, drawn with Pillow.

Why not matplotlib: importing matplotlib.pyplot costs 1-2 s on a quiet CPU and over 10 s on a
busy one, at the end of every run, for one bar chart. Pillow is already installed (torchvision
needs it) and draws it in milliseconds.
"""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..utils.atomic import atomic_write_bytes

DENSE, KEPT, INK = (204, 204, 204), (31, 119, 180), (40, 40, 40)


def width_chart_png(report: dict) -> bytes:
    groups = report["groups"]
    bar, gap, left, right, top, bottom, height = 14, 4, 60, 20, 40, 40, 260
    width = left + right + max(len(groups), 1) * (bar + gap)
    img = Image.new("RGB", (max(width, 480), top + height + bottom), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    tallest = max([g["dense"] for g in groups] + [1])
    base = top + height
    draw.line([(left - 4, top), (left - 4, base)], fill=INK)
    draw.line([(left - 4, base), (width - right, base)], fill=INK)
    for value in (0, tallest // 2, tallest):  # y-axis ticks
        y = base - height * value / tallest
        draw.text((4, y - 6), f"{value}", fill=INK, font=font)
    for i, g in enumerate(groups):
        x0 = left + i * (bar + gap)
        for count, colour in ((g["dense"], DENSE), (g["kept"], KEPT)):
            draw.rectangle([x0, base - height * count / tallest, x0 + bar, base], fill=colour)
    title = (f"widths at {report['flops_ratio']:.2f} of dense FLOPs (budget {report['flops_budget']}): "
             "grey dense, blue kept")
    draw.text((left, 12), title, fill=INK, font=font)
    draw.text((left, base + 12), "prunable group (input to output); y: channels", fill=INK, font=font)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def save_width_chart(report: dict, path: Path) -> None:
    atomic_write_bytes(path, width_chart_png(report))
