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
# A print on the top has a label of its own, so that traced and drawn sketches outline it.
PARTS = ("hair", "backpack", "legs", "lower", "shoes", "neck", "top", "print",
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
    # room above the head for a hat, a tuft or a bun
    hat = 0.05 if sil.hat or sil.hairstyle in ("tuft", "bun") else 0.0
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


def _clip_band(poly: np.ndarray, normal, lo: float, hi: float) -> np.ndarray:
    """The part of a polygon where ``lo <= normal . p <= hi`` (Sutherland-Hodgman)."""
    normal = np.asarray(normal, float)

    def cut(points, sign, bound):
        out = []
        for i in range(len(points)):
            a, b = points[i - 1], points[i]
            da, db = sign * (a @ normal - bound), sign * (b @ normal - bound)
            if (da >= 0) != (db >= 0):
                out.append(a + da / (da - db) * (b - a))
            if db >= 0:
                out.append(b)
        return out
    pts = cut(list(np.asarray(poly, float)), 1.0, lo)
    if pts:
        pts = cut(pts, -1.0, hi)
    return np.array(pts) if len(pts) >= 3 else np.zeros((0, 2))


def _clip_y(poly: np.ndarray, y0: float, y1: float) -> np.ndarray:
    """The part of a polygon between two horizontal lines."""
    return _clip_band(poly, (0.0, 1.0), y0, y1)


def _print_pieces(sil: Silhouette, torso: np.ndarray, cx: float, y0: float, y1: float,
                  sw: float, hw: float) -> list[np.ndarray]:
    """The print on the top, as polygons inside ``torso``; ``y0``..``y1`` is the chest.

    Bold on purpose: a band is 40 % of the chest, each of two stripes 20 %, a sash a
    fifth of the torso's width across, a logo about half of it, so that each survives a
    32 x 16 network input.
    """
    span = y1 - y0
    if sil.print == "band":
        return [_clip_y(torso, y0 + 0.3 * span, y0 + 0.7 * span)]
    if sil.print == "stripes":
        return [_clip_y(torso, y0 + a * span, y0 + b * span) for a, b in ((0.1, 0.3), (0.6, 0.8))]
    if sil.print == "sash":
        # from a shoulder to the other hip; across a shoulder bag's strap, not along it
        side = sil.bag_side if sil.bag == "bag" else -1
        a, b = np.array([cx + side * 0.85 * sw, y0]), np.array([cx - side * hw, y1])
        d = (b - a) / np.hypot(*(b - a))
        normal = np.array([-d[1], d[0]])
        mid, half = normal @ a, 0.2 * sw
        return [_clip_band(torso, normal, mid - half, mid + half)]
    if sil.print == "logo":
        r = min(0.55 * sw, 0.3 * span)
        return [_ellipse(cx, y0 + 0.48 * span, r, r, n=24)]
    return []


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

    # long loose hair falls behind the neck and shoulders; a ponytail sticks out at one side
    if sil.hair == "long" and sil.hairstyle == "loose":
        end = chin + sil.hair_len * hb
        add("hair", [(cx - 0.52 * head_w * vol, ytop + 0.35 * head_h),
                     (cx + 0.52 * head_w * vol, ytop + 0.35 * head_h),
                     (cx + 0.6 * head_w * vol, end - 0.03 * hb),
                     (cx + 0.4 * head_w * vol, end),
                     (cx - 0.4 * head_w * vol, end),
                     (cx - 0.6 * head_w * vol, end - 0.03 * hb)])
    if sil.hairstyle == "ponytail":
        tail = sil.hat_side             # a side drawn for the family
        root = (cx + tail * 0.4 * head_w * vol, ytop + 0.3 * head_h)
        add("hair", _ellipse(root[0], root[1], 0.2 * head_w, 0.2 * head_w, n=12))
        add("hair", _quad(root, (cx + tail * 1.0 * head_w * vol, chin + 0.35 * head_h),
                          0.17 * head_w, 0.11 * head_w))
    if sil.hairstyle == "bun":
        add("hair", _ellipse(cx, ytop - 0.04 * head_h, 0.3 * head_w, 0.24 * head_h, n=16))
    if sil.bag == "backpack":
        bw = sw * 0.92 * sil.bag_size
        bottom_y = waist_y + 0.5 * (hip_y - waist_y)
        if sil.bag_shape == "round":
            y_mid = 0.5 * (sh_y + bottom_y)
            add("backpack", _ellipse(cx, y_mid + 0.02 * hb, bw * 1.08,
                                     0.5 * (bottom_y - sh_y) + 0.03 * hb, n=24))
        else:
            add("backpack", [(cx - bw, sh_y + 0.06 * hb), (cx + bw, sh_y + 0.06 * hb),
                             (cx + bw * 1.04, bottom_y), (cx - bw * 1.04, bottom_y)])

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
    if sil.footwear == "boots":         # shafts up the shin, over trousers (tucked in)
        for _side, top, ankle, _d in legs:
            shaft = ankle + 0.32 * (top - ankle)
            add("shoes", _quad(ankle + 0.02 * hb * np.array([0.0, 1.0]), shaft,
                               limb * 0.62, limb * 0.6))
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
    chest_end = bottom
    if sil.top_length == "coat":        # down to mid-thigh, a little flared
        bottom, bottom_w = crotch + 0.35 * leg_len, hw * 1.22
    torso = np.array([
        (cx - 0.3 * head_w, sh_y - 0.012 * hb), (cx, sh_y + 0.03 * hb),
        (cx + 0.3 * head_w, sh_y - 0.012 * hb), (cx + sw * 0.78, sh_y - 0.004 * hb),
        (cx + sw, sh_y + 0.035 * hb), (cx + sw * 0.94, sh_y + 0.13 * hb),
        (cx + ww * 1.03, waist_y), (cx + bottom_w, bottom), (cx - bottom_w, bottom),
        (cx - ww * 1.03, waist_y), (cx - sw * 0.94, sh_y + 0.13 * hb),
        (cx - sw, sh_y + 0.035 * hb), (cx - sw * 0.78, sh_y - 0.004 * hb)])
    add("top", torso)
    for piece in _print_pieces(sil, torso, cx, sh_y + 0.04 * hb, chest_end, sw, hw):
        if len(piece):
            add("print", piece)
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
        if sil.bag_shape == "round":
            add("bag", _ellipse(bx, hip_y + 0.05 * bh, 0.5 * bw, 0.62 * bh, n=20))
        else:
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
        if sil.bag_shape == "round":
            add("bag", _ellipse(hx, top + 0.45 * bh, 0.55 * bw, 0.6 * bh, n=18))
        else:
            add("bag", [(hx - bw / 2, top), (hx + bw / 2, top),
                        (hx + bw * 0.56, top + bh), (hx - bw * 0.56, top + bh)])

    # head, hair, hat
    hcy = ytop + head_h / 2
    add("head", _ellipse(cx, hcy, head_w / 2, head_h / 2, n=24))
    cap = _ellipse(cx, hcy - 0.06 * head_h, 0.54 * head_w * vol, 0.52 * head_h, 172, 368, 18)
    add("hair", cap)
    if sil.hairstyle == "fringe":       # hair over the forehead, a jagged edge
        xs = np.linspace(-0.5, 0.5, 7) * head_w * vol
        edge = [(cx + x, hcy + (0.26 if k % 2 else 0.08) * head_h) for k, x in enumerate(xs)]
        add("hair", [(cx - 0.52 * head_w * vol, hcy - 0.2 * head_h)] + edge
            + [(cx + 0.52 * head_w * vol, hcy - 0.2 * head_h)])
    if sil.hairstyle == "tuft":         # spikes standing up on top
        w = 0.34 * head_w
        add("hair", [(cx - w, ytop + 0.12 * head_h), (cx - 0.6 * w, ytop - 0.32 * head_h),
                     (cx - 0.1 * w, ytop + 0.02 * head_h), (cx + 0.35 * w, ytop - 0.38 * head_h),
                     (cx + 0.55 * w, ytop + 0.02 * head_h), (cx + 1.05 * w, ytop - 0.22 * head_h),
                     (cx + w, ytop + 0.14 * head_h)])
    if sil.hair == "long" and sil.hairstyle == "loose":
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
