"""Figure geometry: a silhouette in a pose as labelled polygons, and their label map."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from .persons import Silhouette

HEIGHT, WIDTH = 128, 64          # photo and sketch size (H x W), as Market-1501
SUPER = 2                        # drawing happens at SUPER x the final size

# Parts of a figure, back to front as they are usually drawn.  Every part gets
# its own label in the label map; sketches are the boundaries between labels.
PARTS = ("hair", "backpack", "legs", "lower", "shoes", "neck", "top", "stripe",
         "strap", "arm_l", "arm_r", "sleeve_l", "sleeve_r", "bag", "head", "hat")
LABEL = {name: i + 1 for i, name in enumerate(PARTS)}
_SKIN_PARTS = ("legs", "neck", "arm_l", "arm_r", "head")


@dataclass(frozen=True)
class Pose:
    """Where the figure stands (pixels) and how it holds its limbs."""

    cx: float
    feet: float
    scale: float = 1.0
    lean: float = 0.0                       # degrees, about the feet
    arm: tuple[float, float] = (10.0, 10.0)  # outward angle, degrees (left, right)
    elbow: tuple[float, float] = (4.0, 4.0)  # forearm bend back inwards
    leg: tuple[float, float] = (3.0, 3.0)    # outward angle of each leg
    ex_height: float = 1.0                  # exaggerations of a drawing style
    ex_head: float = 1.0
    ex_leg: float = 1.0
    ex_shoulder: float = 1.0
    ex_width: float = 1.0


def _body_height(sil: Silhouette, pose: Pose) -> float:
    return sil.height * HEIGHT * pose.scale * pose.ex_height


def _fit_pose(sil: Silhouette, pose: Pose) -> Pose:
    """Shrink the figure and close the arms until everything is inside the frame."""
    hat = 0.05 if sil.hat else 0.0
    hb = _body_height(sil, pose)
    room = pose.feet - 2.0
    if hb * (1 + hat) > room:
        pose = replace(pose, scale=pose.scale * room / (hb * (1 + hat)))
        hb = _body_height(sil, pose)
    arms = []
    for side, a in zip((-1, 1), pose.arm):
        sw = sil.shoulder * hb * pose.ex_shoulder * pose.ex_width
        edge = WIDTH / 2 - 2.5 - side * (pose.cx - WIDTH / 2) - sw
        extra = 0.12 * hb if (sil.bag == "handbag" and side == sil.bag_side) else 0.05 * hb
        reach = max(sil.arm * hb, 1e-3)
        amax = math.degrees(math.asin(float(np.clip((edge - extra) / reach, 0.0, 1.0))))
        arms.append(float(np.clip(a, 1.0, max(1.0, amax))))
    return replace(pose, arm=(arms[0], arms[1]))


def _ellipse(cx, cy, rx, ry, a0=0.0, a1=360.0, n=20) -> np.ndarray:
    t = np.radians(np.linspace(a0, a1, n))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _quad(p0, p1, w0, w1) -> np.ndarray:
    """A band from ``p0`` to ``p1`` with half widths ``w0`` and ``w1``."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9)
    return np.stack([p0 + n * w0, p1 + n * w1, p1 - n * w1, p0 - n * w0])


def _clip_y(poly: np.ndarray, y0: float, y1: float) -> np.ndarray:
    """The part of a polygon between two horizontal lines (Sutherland-Hodgman)."""
    def cut(points, keep, y):
        out = []
        for i in range(len(points)):
            a, b = points[i - 1], points[i]
            ina, inb = keep(a[1]), keep(b[1])
            if ina != inb:
                t = (y - a[1]) / (b[1] - a[1])
                out.append(a + t * (b - a))
            if inb:
                out.append(b)
        return out
    pts = list(np.asarray(poly, float))
    pts = cut(pts, lambda v: v >= y0, y0)
    if pts:
        pts = cut(pts, lambda v: v <= y1, y1)
    return np.array(pts) if len(pts) >= 3 else np.zeros((0, 2))


def build_figure(sil: Silhouette, pose: Pose) -> list[tuple[str, np.ndarray]]:
    """Polygons ``(part, points)`` of a frontal figure, back to front, in pixels."""
    hb = _body_height(sil, pose)
    cx, yf = pose.cx, pose.feet
    head_h = sil.head * hb * pose.ex_head
    head_w = head_h * 0.8
    ytop = yf - hb
    chin = ytop + head_h
    sh_y = chin + 0.2 * head_h
    leg_len = sil.leg * hb * pose.ex_leg
    crotch = max(yf - leg_len, sh_y + 0.22 * hb)
    leg_len = yf - crotch
    hip_y = crotch - 0.04 * hb
    waist_y = sh_y + 0.58 * (hip_y - sh_y)
    shirt_hem = waist_y + 0.7 * (hip_y - waist_y)
    sw = sil.shoulder * hb * pose.ex_shoulder * pose.ex_width
    hw = sil.hip * hb * pose.ex_width
    ww = hw * sil.waist
    limb = sil.limb * hb * pose.ex_width
    shoe_h = 0.035 * hb
    vol = sil.hair_volume
    parts: list[tuple[str, np.ndarray]] = []
    add = lambda name, pts: parts.append((name, np.asarray(pts, float)))  # noqa: E731

    # long hair falls behind the neck and shoulders
    if sil.hair == "long":
        end = chin + sil.hair_len * hb
        add("hair", [(cx - 0.52 * head_w * vol, ytop + 0.35 * head_h),
                     (cx + 0.52 * head_w * vol, ytop + 0.35 * head_h),
                     (cx + 0.6 * head_w * vol, end - 0.03 * hb),
                     (cx + 0.4 * head_w * vol, end),
                     (cx - 0.4 * head_w * vol, end),
                     (cx - 0.6 * head_w * vol, end - 0.03 * hb)])
    if sil.bag == "backpack":
        bw = sw * 0.92 * sil.bag_size
        add("backpack", [(cx - bw, sh_y + 0.06 * hb), (cx + bw, sh_y + 0.06 * hb),
                         (cx + bw * 1.04, waist_y + 0.5 * (hip_y - waist_y)),
                         (cx - bw * 1.04, waist_y + 0.5 * (hip_y - waist_y))])

    # legs, shoes and the lower garment
    legs = []
    for side, ang in zip((-1, 1), pose.leg):
        top = np.array([cx + side * hw * 0.48, crotch - 0.02 * hb])
        a = math.radians(ang)
        d = np.array([side * math.sin(a), math.cos(a)])
        ankle = top + d * (yf - shoe_h - top[1]) / max(d[1], 0.2)
        legs.append((side, top, ankle, d))
        knee = top + 0.5 * (ankle - top)
        seg1 = _quad(top, knee, hw * 0.52, limb * 0.6)
        seg2 = _quad(knee, ankle, limb * 0.6, limb * 0.4)
        leg_part = "lower" if sil.lower == "trousers" else "legs"
        add(leg_part, [seg1[0], seg1[1], seg2[1], seg2[2], seg1[2], seg1[3]])
    for side, _top, ankle, _d in legs:
        add("shoes", _ellipse(ankle[0] + side * limb * 0.2, yf - shoe_h * 0.45,
                              limb * 0.62, shoe_h * 0.6))
    block = [(cx - ww, waist_y), (cx + ww, waist_y), (cx + hw, hip_y),
             (cx + hw, crotch - 0.02 * hb), (cx, crotch + 0.01 * hb),
             (cx - hw, crotch - 0.02 * hb), (cx - hw, hip_y)]
    if sil.lower in ("trousers", "shorts"):
        add("lower", block)
    if sil.lower == "shorts":
        for _side, top, ankle, _d in legs:
            end = top + sil.hem * (ankle - top)
            add("lower", _quad(top, end, hw * 0.54, limb * 0.78))
    if sil.lower in ("skirt", "dress"):
        hem_y = crotch + sil.hem * leg_len
        spread = max(abs(legs[0][1][0] + sil.hem * (legs[0][2][0] - legs[0][1][0]) - cx),
                     abs(legs[1][1][0] + sil.hem * (legs[1][2][0] - legs[1][1][0]) - cx))
        hem_w = max(hw * 1.12 + 0.22 * (hem_y - hip_y), spread + limb)
        name = "top" if sil.lower == "dress" else "lower"
        curve = _ellipse(cx, hem_y - 0.01 * hb, hem_w, 0.025 * hb, 0, 180, 9)
        add(name, np.concatenate([[(cx - ww, waist_y), (cx + ww, waist_y),
                                   (cx + hw * 1.03, hip_y)], curve,
                                  [(cx - hw * 1.03, hip_y)]]))

    # neck and torso
    add("neck", [(cx - 0.22 * head_w, chin - 0.2 * head_h),
                 (cx + 0.22 * head_w, chin - 0.2 * head_h),
                 (cx + 0.22 * head_w, sh_y + 0.05 * hb),
                 (cx - 0.22 * head_w, sh_y + 0.05 * hb)])
    bottom = waist_y if sil.lower == "dress" else shirt_hem
    bottom_w = ww * 1.02 if sil.lower == "dress" else hw * 1.02
    torso = np.array([
        (cx - 0.3 * head_w, sh_y - 0.012 * hb), (cx, sh_y + 0.03 * hb),
        (cx + 0.3 * head_w, sh_y - 0.012 * hb), (cx + sw * 0.78, sh_y - 0.004 * hb),
        (cx + sw, sh_y + 0.035 * hb), (cx + sw * 0.94, sh_y + 0.13 * hb),
        (cx + ww * 1.03, waist_y), (cx + bottom_w, bottom), (cx - bottom_w, bottom),
        (cx - ww * 1.03, waist_y), (cx - sw * 0.94, sh_y + 0.13 * hb),
        (cx - sw, sh_y + 0.035 * hb), (cx - sw * 0.78, sh_y - 0.004 * hb)])
    add("top", torso)
    if sil.pattern == "stripes":
        y0, y1 = sh_y + 0.05 * hb, bottom
        band = (y1 - y0) / (2 * sil.stripes)
        for k in range(sil.stripes):
            piece = _clip_y(torso, y0 + (2 * k + 0.5) * band, y0 + (2 * k + 1.5) * band)
            if len(piece):
                add("stripe", piece)
    if sil.bag == "backpack":
        for side in (-1, 1):
            add("strap", _quad((cx + side * sw * 0.55, sh_y - 0.006 * hb),
                               (cx + side * sw * 0.62, waist_y - 0.02 * hb), 0.02 * hb, 0.02 * hb))

    # arms
    hands = {}
    for side, ang, bend in zip((-1, 1), pose.arm, pose.elbow):
        tag = "_l" if side < 0 else "_r"
        joint = np.array([cx + side * (sw - limb * 0.45), sh_y + limb * 0.45])
        a1, a2 = math.radians(ang), math.radians(ang - bend)
        d1 = np.array([side * math.sin(a1), math.cos(a1)])
        d2 = np.array([side * math.sin(a2), math.cos(a2)])
        elbow = joint + d1 * sil.arm * hb * 0.47
        wrist = elbow + d2 * sil.arm * hb * 0.43
        hand = wrist + d2 * limb * 0.35
        hands[side] = hand
        add("arm" + tag, _quad(joint, elbow, limb * 0.5, limb * 0.42))
        add("arm" + tag, _ellipse(elbow[0], elbow[1], limb * 0.42, limb * 0.42, n=12))
        add("arm" + tag, _quad(elbow, wrist, limb * 0.42, limb * 0.34))
        add("arm" + tag, _ellipse(hand[0], hand[1], limb * 0.45, limb * 0.5, n=12))
        add("sleeve" + tag, _ellipse(joint[0], joint[1], limb * 0.62, limb * 0.62, n=14))
        if sil.sleeve == "long":
            add("sleeve" + tag, _quad(joint, elbow, limb * 0.58, limb * 0.5))
            add("sleeve" + tag, _ellipse(elbow[0], elbow[1], limb * 0.5, limb * 0.5, n=12))
            add("sleeve" + tag, _quad(elbow, wrist, limb * 0.5, limb * 0.44))
        else:
            end = joint + d1 * sil.arm * hb * 0.47 * sil.sleeve_len
            add("sleeve" + tag, _quad(joint, end, limb * 0.62, limb * 0.66))

    # bags carried in front
    if sil.bag == "bag":
        s = sil.bag_side
        bw, bh = 0.15 * hb * sil.bag_size, 0.11 * hb * sil.bag_size
        bx = cx + s * (hw + 0.25 * bw)
        add("strap", _quad((cx - s * sw * 0.55, sh_y - 0.004 * hb),
                           (bx - s * 0.1 * bw, hip_y - 0.5 * bh), 0.013 * hb, 0.013 * hb))
        add("bag", [(bx - bw / 2, hip_y - 0.5 * bh), (bx + bw / 2, hip_y - 0.5 * bh),
                    (bx + bw / 2 + 0.04 * bw * s, hip_y + 0.5 * bh),
                    (bx - bw / 2 + 0.04 * bw * s, hip_y + 0.5 * bh)])
    if sil.bag == "handbag":
        s = sil.bag_side
        hx, hy = hands[s]
        bw, bh = 0.11 * hb * sil.bag_size, 0.085 * hb * sil.bag_size
        top = hy + limb * 0.9
        add("bag", _quad((hx - bw * 0.32, top), (hx, hy - limb * 0.2), 0.012 * hb, 0.012 * hb))
        add("bag", _quad((hx + bw * 0.32, top), (hx, hy - limb * 0.2), 0.012 * hb, 0.012 * hb))
        add("bag", [(hx - bw / 2, top), (hx + bw / 2, top),
                    (hx + bw * 0.56, top + bh), (hx - bw * 0.56, top + bh)])

    # head, hair, hat
    hcy = ytop + head_h / 2
    add("head", _ellipse(cx, hcy, head_w / 2, head_h / 2, n=24))
    cap = _ellipse(cx, hcy - 0.06 * head_h, 0.54 * head_w * vol, 0.52 * head_h, 172, 368, 18)
    add("hair", cap)
    if sil.hair == "long":
        end = chin + sil.hair_len * hb
        for side in (-1, 1):
            add("hair", _quad((cx + side * 0.4 * head_w * vol, hcy - 0.1 * head_h),
                              (cx + side * 0.46 * head_w * vol, end),
                              0.14 * head_w * vol, 0.12 * head_w * vol))
    if sil.hat:
        s = sil.hat_side
        add("hat", _ellipse(cx, ytop + 0.32 * head_h, 0.58 * head_w * vol, 0.46 * head_h,
                            180, 360, 14))
        add("hat", [(cx - s * 0.6 * head_w * vol, ytop + 0.26 * head_h),
                    (cx + s * 1.0 * head_w * vol, ytop + 0.28 * head_h),
                    (cx + s * 1.0 * head_w * vol, ytop + 0.38 * head_h),
                    (cx - s * 0.6 * head_w * vol, ytop + 0.4 * head_h)])

    if pose.lean:
        a = math.radians(pose.lean)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        origin = np.array([cx, yf])
        parts = [(n, (p - origin) @ rot.T + origin) for n, p in parts]
    return parts


def label_map(parts: Sequence[tuple[str, np.ndarray]], supersample: int = SUPER) -> np.ndarray:
    """Paint the parts with their labels (0 = background) at the drawing size."""
    img = Image.new("L", (WIDTH * supersample, HEIGHT * supersample), 0)
    draw = ImageDraw.Draw(img)
    for name, pts in parts:
        if len(pts) >= 3:
            draw.polygon([tuple(p) for p in (pts * supersample).tolist()], fill=LABEL[name])
    return np.asarray(img)
