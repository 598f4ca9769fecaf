"""Rendering: photos of a person, and sketches traced from a photo or drawn in a style."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from .figure import (
    _SKIN_PARTS,
    HEIGHT,
    LABEL,
    SUPER,
    WIDTH,
    Pose,
    _fit_pose,
    build_figure,
    label_map,
)
from .persons import COLOUR_RGB, HAIR_RGB, SKIN_RGB, Person, Silhouette, _pick, print_rgb

# ----------------------------------------------------------------------------
# Photos
# ----------------------------------------------------------------------------

def _person_palette(p: Person) -> np.ndarray:
    """Colour of every label of the figure, as a 256 x 3 lookup table."""
    lut = np.zeros((256, 3), np.float32)
    sil = p.sil
    sleeves = p.top[1] if len(p.top) > 1 else p.top[0]     # a second top colour: the sleeves
    colours = {
        "hair": HAIR_RGB[sil.hair_colour],
        "backpack": COLOUR_RGB[p.bag_colour], "strap": COLOUR_RGB[p.bag_colour],
        "bag": COLOUR_RGB[p.bag_colour],
        "lower": COLOUR_RGB[p.lower_colour], "shoes": COLOUR_RGB[p.shoes],
        "top": COLOUR_RGB[p.top[0]], "print": print_rgb(p.top[0]),
        "sleeve_l": COLOUR_RGB[sleeves], "sleeve_r": COLOUR_RGB[sleeves],
        "hat": COLOUR_RGB[p.hat_colour],
    }
    for name in _SKIN_PARTS:
        colours[name] = SKIN_RGB[sil.skin]
    for name, rgb in colours.items():
        lut[LABEL[name]] = rgb
    return lut


def _smooth_noise(rng, shape, grid) -> np.ndarray:
    """Smooth noise in about [-1, 1] from a coarse random grid."""
    coarse = rng.normal(size=grid).astype(np.float32)
    zoom = (shape[0] / grid[0], shape[1] / grid[1])
    out = ndimage.zoom(coarse, zoom, order=1, mode="nearest")
    return out[: shape[0], : shape[1]]


def _muted(rng, lo=60, hi=200, tint=28) -> np.ndarray:
    g = rng.uniform(lo, hi)
    return np.clip(g + rng.uniform(-tint, tint, 3), 0, 255)


def _background(rng, h, w, feet) -> np.ndarray:
    kind = _pick(rng, ("solid", "gradient", "texture", "blocks"))
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    c1 = _muted(rng)
    if kind == "solid":
        bg = np.broadcast_to(c1, (h, w, 3)).astype(np.float32)
    elif kind == "gradient":
        bg = c1 * (1 - yy) + _muted(rng) * yy
        bg = np.broadcast_to(bg, (h, w, 3)).astype(np.float32)
    else:
        bg = np.broadcast_to(c1, (h, w, 3)).astype(np.float32).copy()
        bg += 30 * _smooth_noise(rng, (h, w), (8, 4))[..., None]
        if kind == "blocks":
            for _ in range(int(rng.integers(2, 6))):
                x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.1, 0.6) * h
                bw, bh = rng.uniform(0.1, 0.5) * w, rng.uniform(0.1, 0.4) * h
                rows = slice(int(max(y0, 0)), int(max(y0 + bh, 0)))
                cols = slice(int(max(x0, 0)), int(max(x0 + bw, 0)))
                bg[rows, cols] = _muted(rng)
        bg += rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    # ground below a horizon line
    horizon = int(np.clip(feet - rng.uniform(0.1, 0.35) * h, 0.45 * h, h - 4))
    ground = _muted(rng, 70, 180, 18)
    bg = bg.copy()
    bg[horizon:] = ground + 12 * _smooth_noise(rng, (h - horizon, w), (3, 4))[..., None]
    bg[horizon: horizon + SUPER] *= 0.7
    return bg


def _photo_pose(rng, sil: Silhouette) -> Pose:
    pose = Pose(
        cx=WIDTH / 2 + rng.uniform(-4, 4), feet=HEIGHT - rng.uniform(2, 6),
        scale=rng.uniform(0.95, 1.03), lean=rng.uniform(-4, 4),
        arm=(rng.uniform(3, 20), rng.uniform(3, 20)),
        elbow=(rng.uniform(-6, 14), rng.uniform(-6, 14)),
        leg=(rng.uniform(0.5, 8), rng.uniform(0.5, 8)))
    return _fit_pose(sil, pose)


# Photos draw the boundary of every part this much darker (a tiny model matches photos to
# line sketches more easily when the lines are there in the photo too).
OUTLINE_SHADE = 0.72


def _outline(lab: np.ndarray) -> np.ndarray:
    """Figure pixels next to another label (another part or the background)."""
    diff_x = lab[:, 1:] != lab[:, :-1]
    diff_y = lab[1:, :] != lab[:-1, :]
    edge = np.zeros(lab.shape, bool)
    edge[:, 1:] |= diff_x
    edge[:, :-1] |= diff_x
    edge[1:, :] |= diff_y
    edge[:-1, :] |= diff_y
    return edge & (lab > 0)


def render_photo(person: Person, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """A photo of ``person`` in a random pose and the label map of its figure; the
    boundaries of the parts are drawn ``OUTLINE_SHADE`` darker."""
    pose = _photo_pose(rng, person.sil)
    lab = label_map(build_figure(person.sil, pose))
    h, w = lab.shape
    bg = _background(rng, h, w, pose.feet * SUPER)
    # a soft shadow under the feet
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shadow = (((xx - pose.cx * SUPER) / (0.3 * w)) ** 2
              + ((yy - pose.feet * SUPER) / (0.025 * h)) ** 2)
    bg *= (1 - 0.35 * np.exp(-shadow))[..., None]
    fig = _person_palette(person)[lab]
    light = rng.uniform(-1, 1)
    shade = (rng.uniform(0.88, 1.08) * (1 + 0.08 * light * (xx - pose.cx * SUPER) / (0.25 * w))
             * (1 + 0.06 * _smooth_noise(rng, (h, w), (16, 8))))
    fig = fig * shade[..., None]
    fig[_outline(lab)] *= OUTLINE_SHADE
    img = np.where((lab > 0)[..., None], fig, bg)
    img *= rng.uniform(0.96, 1.04, 3).astype(np.float32)  # camera colour balance
    photo = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).reduce(SUPER)
    blur = rng.uniform(0.0, 0.7)
    if blur > 0.25:
        photo = photo.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(photo, np.float32) + rng.normal(0, rng.uniform(1.5, 5), (HEIGHT, WIDTH, 3))
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8)), lab


# ----------------------------------------------------------------------------
# Sketches
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SketchStyle:
    """How strokes are laid along the label boundaries, and how a drawn figure is exaggerated."""

    radius: float = 2.6          # line half width at the drawing size (px)
    ink: float = 0.95            # darkness of the strokes
    wobble: float = 0.0          # smooth displacement of the outline (px)
    jitter: float = 0.0          # fine displacement (px)
    broken: float = 0.0          # fraction of stroke length dropped
    double: bool = False         # a second, slightly offset stroke
    hatch: tuple[str, ...] = ()  # parts filled with hatching
    cross: bool = False          # cross-hatching instead of single
    ex: dict[str, float] = field(default_factory=dict)   # proportion exaggerations


TRACED = SketchStyle(radius=2.6, ink=0.95)
STYLES = ("A", "B", "C", "D", "E", "F")           # of the drawn sketches
DRAWN: dict[str, SketchStyle] = {
    "A": SketchStyle(radius=2.4, ink=0.95),
    "B": SketchStyle(radius=3.4, ink=0.9, wobble=1.5, ex={"ex_head": 1.12}),
    "C": SketchStyle(radius=2.4, ink=0.92, wobble=3.0, jitter=0.9, ex={"ex_leg": 1.06}),
    "D": SketchStyle(radius=2.4, ink=0.9, wobble=1.0,
                     hatch=("hair", "shoes", "bag", "backpack", "hat", "lower"),
                     ex={"ex_shoulder": 1.08}),
    "E": SketchStyle(radius=2.2, ink=0.75, wobble=2.0, broken=0.18, double=True,
                     ex={"ex_width": 0.93}),
    "F": SketchStyle(radius=3.8, ink=1.0, hatch=("hair", "shoes"),
                     ex={"ex_head": 0.92, "ex_height": 1.04}),
}


def _edges(lab: np.ndarray) -> np.ndarray:
    e = np.zeros(lab.shape, bool)
    e[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    e[1:, :] |= lab[1:, :] != lab[:-1, :]
    return e


def _strokes(lab: np.ndarray, radius: float) -> np.ndarray:
    e = _edges(lab)
    if not e.any():
        return np.zeros(lab.shape, np.float32)
    dist = ndimage.distance_transform_edt(~e)
    return np.clip(radius + 0.5 - dist, 0, 1).astype(np.float32)


def _warp(lab: np.ndarray, rng, wobble: float, jitter: float) -> np.ndarray:
    h, w = lab.shape
    dy = wobble * _smooth_noise(rng, (h, w), (6, 3))
    dx = wobble * _smooth_noise(rng, (h, w), (6, 3))
    if jitter:
        dy += jitter * _smooth_noise(rng, (h, w), (48, 24))
        dx += jitter * _smooth_noise(rng, (h, w), (48, 24))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return ndimage.map_coordinates(lab, [yy + dy, xx + dx], order=0, mode="constant", cval=0)


def sketch_from_labels(lab: np.ndarray, style: SketchStyle,
                       rng: np.random.Generator) -> Image.Image:
    """Dark strokes on white along the boundaries of a label map, in ``style``."""
    if style.wobble or style.jitter:
        lab = _warp(lab, rng, style.wobble, style.jitter)
    ink = _strokes(lab, style.radius) * style.ink
    h, w = lab.shape
    if style.broken:
        keep = _smooth_noise(rng, (h, w), (32, 16)) > -2.2 * style.broken * 2
        ink *= keep
    if style.double:
        other = _warp(lab, rng, 1.2, 0.0)
        ink = np.maximum(ink, 0.7 * style.ink * _strokes(other, style.radius * 0.7))
    if style.hatch:
        yy, xx = np.mgrid[0:h, 0:w]
        region = np.isin(lab, [LABEL[n] for n in style.hatch])
        lines = ((xx + yy) % 7) < 2
        if style.cross:
            lines |= ((xx - yy) % 7) < 2
        ink = np.maximum(ink, 0.75 * style.ink * (region & lines))
    img = Image.fromarray(np.clip(255 * (1 - ink), 0, 255).astype(np.uint8), "L")
    img = img.filter(ImageFilter.GaussianBlur(0.6)).reduce(SUPER)
    return img.convert("RGB")


def _drawn_pose(rng, sil: Silhouette, style: SketchStyle) -> Pose:
    pose = Pose(
        cx=WIDTH / 2 + rng.normal(0, 1.0), feet=HEIGHT - 3 - rng.uniform(0, 2),
        scale=rng.uniform(0.96, 1.0), lean=rng.normal(0, 0.8),
        arm=(9 + rng.normal(0, 2.5), 9 + rng.normal(0, 2.5)),
        elbow=(4 + rng.normal(0, 2), 4 + rng.normal(0, 2)),
        leg=(3 + rng.normal(0, 1), 3 + rng.normal(0, 1)),
        **{k: v * rng.uniform(0.97, 1.03) for k, v in style.ex.items()})
    return _fit_pose(sil, pose)


def render_drawn_sketch(person: Person, style: str, rng: np.random.Generator) -> Image.Image:
    """A sketch drawn from scratch: neutral pose, proportions and strokes of ``style``."""
    st = DRAWN[style]
    lab = label_map(build_figure(person.sil, _drawn_pose(rng, person.sil, st)))
    return sketch_from_labels(lab, st, rng)
