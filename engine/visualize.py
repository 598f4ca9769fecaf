"""Pictures for people: ranked photos for a query, metrics over feedback rounds, and
training curves."""
from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from datasets.base import read_image

THUMB = (64, 128)  # (width, height) of each picture in a rank sheet
GREEN, RED, GREY = (34, 160, 60), (210, 40, 40), (150, 150, 150)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def rank_sheet(query_path: Path | None, query_text: str, ranked_paths: Sequence[Path],
               scores: Sequence[float], correct: Sequence[bool] | None = None,
               title: str = "") -> Image.Image:
    """One row: the query sketch (a blank tile for a text-only query; its text below the
    row), then the ranked photos with rank and score; with ``correct``, matches are outlined
    green and others red."""
    pad, label_height = 8, 36
    columns = 1 + len(ranked_paths)
    text_lines = textwrap.wrap(query_text, width=max(30, columns * 11)) if query_text else []
    width = pad + columns * (THUMB[0] + pad) + pad
    height = pad + (18 if title else 0) + THUMB[1] + label_height + 16 * len(text_lines) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    small, tiny = _font(13), _font(11)
    top = pad
    if title:
        draw.text((pad, pad), title, fill="black", font=small)
        top += 18
    query = (read_image(query_path) if query_path is not None
             else Image.new("RGB", THUMB, "white"))
    tiles = [(query, "query" if query_path is not None else "text", GREY)]
    for rank, (path, score) in enumerate(zip(ranked_paths, scores), start=1):
        colour = GREY if correct is None else (GREEN if correct[rank - 1] else RED)
        tiles.append((read_image(path), f"#{rank}\n{score:.3f}", colour))
    for column, (image, label, colour) in enumerate(tiles):
        left = pad + column * (THUMB[0] + pad)
        sheet.paste(image.resize(THUMB), (left, top))
        draw.rectangle([left - 3, top - 3, left + THUMB[0] + 2, top + THUMB[1] + 2],
                       outline=colour, width=3)
        draw.multiline_text((left, top + THUMB[1] + 5), label, fill="black", font=tiny,
                            spacing=2)
    y = top + THUMB[1] + label_height
    for line in text_lines:
        draw.text((pad, y), line, fill="black", font=small)
        y += 16
    return sheet


def line_plot(series: dict, x_values: Sequence, x_label: str, path: Path,
              title: str = "") -> None:
    """A small line chart (PNG) of ``series`` {name: [y...]} in percent over ``x_values``."""
    width, height, margin = 520, 340, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = _font(12)
    top = max(100.0, max(max(values) for values in series.values()))
    left, right, upper, lower = margin, width - 20, 30, height - margin
    draw.line([left, upper, left, lower, right, lower], fill="black", width=1)
    for tick in range(0, int(top) + 1, 20):
        y = lower - (lower - upper) * tick / top
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((8, y - 7), f"{tick}", fill="black", font=font)
    count = max(1, len(x_values) - 1)
    xs = [left + (right - left) * index / count for index in range(len(x_values))]
    for x, value in zip(xs, x_values):
        draw.text((x - 4, lower + 6), str(value), fill="black", font=font)
    draw.text(((left + right) // 2 - 20, height - 22), x_label, fill="black", font=font)
    if title:
        draw.text((left, 8), title, fill="black", font=font)
    palette = [(40, 90, 200), (210, 90, 30), (30, 150, 60), (150, 40, 160)]
    for index, (name, values) in enumerate(series.items()):
        colour = palette[index % len(palette)]
        points = [(x, lower - (lower - upper) * value / top) for x, value in zip(xs, values)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((right - 90, upper + 16 * index), name, fill=colour, font=font)
    image.save(path)


PALETTE = [(40, 90, 200), (210, 90, 30), (30, 150, 60), (150, 40, 160), (200, 160, 0),
           (0, 150, 160), (120, 120, 120)]


def _ticks(low: float, high: float, count: int = 5) -> list:
    """About ``count`` round tick values covering [low, high]."""
    span = (high - low) or abs(high) or 1.0
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 2)]


def curve_panel(series: dict, title: str, x_label: str, size=(640, 300)) -> Image.Image:
    """A line chart of ``series`` {name: (xs, ys)} with axes fitted to the data."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = _font(12)
    left, right, upper, lower = 60, width - 150, 28, height - 40
    points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys)
              if y is not None and math.isfinite(y)]
    draw.text((left, 6), title, fill="black", font=font)
    draw.line([left, upper, left, lower, right, lower], fill="black", width=1)
    draw.text(((left + right) // 2 - 20, height - 18), x_label, fill="black", font=font)
    if not points:
        draw.text((left + 10, (upper + lower) // 2), "no data", fill="black", font=font)
        return image
    x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
    y_ticks = _ticks(min(p[1] for p in points), max(p[1] for p in points))
    y_low, y_high = y_ticks[0], y_ticks[-1]
    x_span, y_span = (x_high - x_low) or 1.0, (y_high - y_low) or 1.0

    def at(x, y):
        return (left + (right - left) * (x - x_low) / x_span,
                lower - (lower - upper) * (y - y_low) / y_span)

    for tick in y_ticks:
        _, y = at(x_low, tick)
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((6, y - 7), f"{tick:g}", fill="black", font=font)
    for tick in _ticks(x_low, x_high):
        if x_low <= tick <= x_high:
            x, _ = at(tick, y_low)
            draw.line([x, lower, x, lower + 4], fill="black")
            draw.text((x - 8, lower + 6), f"{tick:g}", fill="black", font=font)
    for index, (name, (xs, ys)) in enumerate(series.items()):
        colour = PALETTE[index % len(PALETTE)]
        line = [at(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        elif line:
            x, y = line[0]
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((right + 10, upper + 16 * index), name, fill=colour, font=font)
    return image


def stack(images: Sequence[Image.Image]) -> Image.Image:
    """Images one below the other, on white."""
    width = max(image.width for image in images)
    sheet = Image.new("RGB", (width, sum(image.height for image in images)), "white")
    top = 0
    for image in images:
        sheet.paste(image, (0, top))
        top += image.height
    return sheet
