"""Engine 7: plane-geometry figures drawn with PIL; target the TikZ that reproduces the drawing.

A figure mixes triangles, quadrilaterals, regular polygons, segments, circles (free, circumscribed,
inscribed), rectangles, labelled points, medians and sometimes x/y axes. Every coordinate is rounded to
two decimals *before* drawing, and the drawing is made from those rounded numbers, so the TikZ coordinates
are exactly the drawn geometry (1 TikZ unit = `meta["px_per_unit"]` pixels, y up). Styles map to TikZ:
line widths `thin` (default 0.4pt) / `thick` (0.8pt) / `very thick` (1.2pt), `dashed` (3pt on, 3pt off),
colours `red` / `blue`; points are `\\fill (x,y) circle (1.5pt);` with a `\\node[<anchor>] at (x,y) {$A$};` label.
Lines are drawn 2x supersampled for anti-aliasing.
"""
from __future__ import annotations

import math
import random
import string

from PIL import Image, ImageDraw

from data_engines.base import Sample
from data_engines.fonts import load_font
from data_engines.structured import format_conversation, paper

PT_PER_UNIT = 28.4528  # TeX points per cm
WIDTHS = {"": 0.4, "thick": 0.8, "very thick": 1.2}
COLORS = {"": (0, 0, 0), "red": (220, 0, 0), "blue": (0, 0, 230)}
ANCHORS = {"above": (0, 1), "below": (0, -1), "left": (-1, 0), "right": (1, 0), "above left": (-1, 1),
           "above right": (1, 1), "below left": (-1, -1), "below right": (1, -1)}
SS = 2  # supersampling factor


def num(v: float) -> str:
    """TikZ number: at most two decimals, no trailing zeros, never "-0"."""
    s = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def r2(v: float) -> float:
    return float(num(v))


def pt(p: tuple[float, float]) -> str:
    return f"({num(p[0])},{num(p[1])})"


def style_opts(style: dict) -> str:
    opts = [o for o in (style.get("color", ""), style.get("width", ""), "dashed" if style.get("dashed") else "") if o]
    return f"[{', '.join(opts)}]" if opts else ""


def to_tikz(shapes: list[dict]) -> str:
    """Shapes (as in meta) -> tikzpicture, one command per line."""
    out = [r"\begin{tikzpicture}"]
    for s in shapes:
        o = style_opts(s)
        t = s["type"]
        if t == "polygon":
            out.append(rf"\draw{o} " + " -- ".join(pt(p) for p in s["points"]) + " -- cycle;")
        elif t == "segment":
            out.append(rf"\draw{o} {pt(s['points'][0])} -- {pt(s['points'][1])};")
        elif t == "arrow":
            o = style_opts(s)[1:-1] if style_opts(s) else ""
            out.append(rf"\draw[->{', ' + o if o else ''}] {pt(s['points'][0])} -- {pt(s['points'][1])}"
                       rf" node[{s['anchor']}] {{${s['label']}$}};")
        elif t == "rectangle":
            out.append(rf"\draw{o} {pt(s['points'][0])} rectangle {pt(s['points'][1])};")
        elif t == "circle":
            out.append(rf"\draw{o} {pt(s['center'])} circle ({num(s['radius'])});")
        elif t == "point":
            out.append(rf"\fill {pt(s['at'])} circle (1.5pt);")
            if s.get("label"):
                out.append(rf"\node[{s['anchor']}] at {pt(s['at'])} {{${s['label']}$}};")
    out.append(r"\end{tikzpicture}")
    return "\n".join(out)


class _Scene:
    """Builds the shape list inside the box [x0, x0+w] x [y0, y0+h] (TikZ units)."""

    def __init__(self, rng: random.Random, x0: float, y0: float, w: float, h: float):
        self.rng, self.x0, self.y0, self.w, self.h = rng, x0, y0, w, h
        self.shapes: list[dict] = []
        self.labels = iter(string.ascii_uppercase.replace("O", "") + string.ascii_lowercase)
        self.points: dict[tuple[float, float], str] = {}

    def style(self, allow_dash: bool = True) -> dict:
        rng = self.rng
        return {"width": rng.choices(list(WIDTHS), [5, 3, 1])[0],
                "color": rng.choices(list(COLORS), [8, 1, 1])[0],
                "dashed": allow_dash and rng.random() < 0.15}

    def rand_pt(self, margin: float = 0.3) -> tuple[float, float]:
        rng = self.rng
        return (r2(rng.uniform(self.x0 + margin, self.x0 + self.w - margin)),
                r2(rng.uniform(self.y0 + margin, self.y0 + self.h - margin)))

    def inside(self, p: tuple[float, float], r: float = 0.0) -> bool:
        return (self.x0 <= p[0] - r and p[0] + r <= self.x0 + self.w and
                self.y0 <= p[1] - r and p[1] + r <= self.y0 + self.h)

    def label(self, p: tuple[float, float], name: str | None = None, anchor: str | None = None) -> None:
        if p in self.points:
            return
        name = name or next(self.labels)
        self.points[p] = name
        self.shapes.append({"type": "point", "at": p, "label": name,
                            "anchor": anchor or self.rng.choice(list(ANCHORS))})

    def polygon(self) -> list[tuple[float, float]] | None:
        rng = self.rng
        n = rng.choices([3, 4, 5, 6], [6, 3, 1, 1])[0]
        if rng.random() < 0.35:  # regular polygon
            r = rng.uniform(0.8, min(self.w, self.h) / 2.2)
            c = self.rand_pt(r)
            a0 = rng.uniform(0, 2 * math.pi)
            pts = [(r2(c[0] + r * math.cos(a0 + 2 * math.pi * k / n)), r2(c[1] + r * math.sin(a0 + 2 * math.pi * k / n)))
                   for k in range(n)]
        else:  # random convex polygon: sorted angles around a centre
            c = self.rand_pt(1.0)
            angles = sorted(rng.uniform(0, 2 * math.pi) for _ in range(n))
            rad = [rng.uniform(0.8, min(self.w, self.h) / 2) for _ in range(n)]
            pts = [(r2(c[0] + rr * math.cos(a)), r2(c[1] + rr * math.sin(a))) for a, rr in zip(angles, rad)]
        if not all(self.inside(p) for p in pts) or len(set(pts)) < n or _area(pts) < 0.5:
            return None
        return pts

    def add_polygon(self) -> None:
        pts = self.polygon()
        if pts is None:
            return
        self.shapes.append({"type": "polygon", "points": pts, **self.style()})
        if self.rng.random() < 0.7:
            for p in pts:
                self.label(p, anchor=_outward(p, pts))
        if len(pts) == 3:
            r = self.rng.random()
            if r < 0.25:  # circumscribed circle
                c, rad = _circumcircle(pts)
                if c and self.inside(c, rad):
                    self.shapes.append({"type": "circle", "center": (r2(c[0]), r2(c[1])), "radius": r2(rad),
                                        **self.style()})
                    if self.rng.random() < 0.6:
                        self.label((r2(c[0]), r2(c[1])), "O")
            elif r < 0.4:  # inscribed circle
                c, rad = _incircle(pts)
                self.shapes.append({"type": "circle", "center": (r2(c[0]), r2(c[1])), "radius": r2(rad),
                                    **self.style()})
            elif r < 0.6:  # a median with its foot labelled
                i = self.rng.randrange(3)
                a, b = pts[(i + 1) % 3], pts[(i + 2) % 3]
                m = (r2((a[0] + b[0]) / 2), r2((a[1] + b[1]) / 2))
                self.shapes.append({"type": "segment", "points": [pts[i], m], **self.style()})
                self.label(m, anchor=_outward(m, pts))

    def add_circle(self) -> None:
        rad = r2(self.rng.uniform(0.5, min(self.w, self.h) / 2.2))
        c = self.rand_pt(rad)
        if not self.inside(c, rad):
            return
        self.shapes.append({"type": "circle", "center": c, "radius": rad, **self.style()})
        if self.rng.random() < 0.6:
            self.label(c)
        if self.rng.random() < 0.4:  # a radius to a point on the circle
            a = self.rng.uniform(0, 2 * math.pi)
            p = (r2(c[0] + rad * math.cos(a)), r2(c[1] + rad * math.sin(a)))
            self.shapes.append({"type": "segment", "points": [c, p], **self.style()})
            self.label(p, anchor=_outward(p, [c]))

    def add_segment(self) -> None:
        a, b = self.rand_pt(), self.rand_pt()
        if math.dist(a, b) < 0.8:
            return
        self.shapes.append({"type": "segment", "points": [a, b], **self.style()})
        if self.rng.random() < 0.6:
            self.label(a)
            self.label(b)

    def add_rectangle(self) -> None:
        a, b = self.rand_pt(), self.rand_pt()
        if abs(a[0] - b[0]) < 0.8 or abs(a[1] - b[1]) < 0.8:
            return
        self.shapes.append({"type": "rectangle", "points": [a, b], **self.style()})

    def add_points(self) -> None:
        for _ in range(self.rng.randint(1, 3)):
            self.label(self.rand_pt())


def _area(pts: list[tuple[float, float]]) -> float:
    return abs(sum(pts[i][0] * pts[i - 1][1] - pts[i - 1][0] * pts[i][1] for i in range(len(pts)))) / 2


def _outward(p: tuple[float, float], pts: list[tuple[float, float]]) -> str:
    """Label anchor pointing away from the polygon's centroid."""
    cx, cy = sum(q[0] for q in pts) / len(pts), sum(q[1] for q in pts) / len(pts)
    a = math.degrees(math.atan2(p[1] - cy, p[0] - cx)) % 360
    names = ["right", "above right", "above", "above left", "left", "below left", "below", "below right"]
    return names[int((a + 22.5) // 45) % 8]


def _circumcircle(p):
    (ax, ay), (bx, by), (cx, cy) = p
    d = 2 * (ax * (by - cy) + bx * (cy - ay) + cx * (ay - by))
    if abs(d) < 1e-9:
        return None, 0.0
    ux = ((ax ** 2 + ay ** 2) * (by - cy) + (bx ** 2 + by ** 2) * (cy - ay) + (cx ** 2 + cy ** 2) * (ay - by)) / d
    uy = ((ax ** 2 + ay ** 2) * (cx - bx) + (bx ** 2 + by ** 2) * (ax - cx) + (cx ** 2 + cy ** 2) * (bx - ax)) / d
    return (ux, uy), math.dist((ux, uy), p[0])


def _incircle(p):
    a, b, c = math.dist(p[1], p[2]), math.dist(p[0], p[2]), math.dist(p[0], p[1])
    s = a + b + c
    center = ((a * p[0][0] + b * p[1][0] + c * p[2][0]) / s, (a * p[0][1] + b * p[1][1] + c * p[2][1]) / s)
    return center, 2 * _area(p) / s


class GeometryEngine:
    """Random figure -> PIL drawing + TikZ."""

    name = "geometry"

    def __init__(self, max_side: int = 1024):
        self.max_side = max_side

    def render(self, rng: random.Random) -> Sample:
        w, h = r2(rng.uniform(5, 10)), r2(rng.uniform(4, 8))
        axes = rng.random() < 0.2
        x0, y0 = (-r2(rng.uniform(0.5, w / 2)), -r2(rng.uniform(0.5, h / 2))) if axes else (0.0, 0.0)
        scene = _Scene(rng, x0, y0, w, h)
        if axes:
            for end, lab, anc in (((r2(x0 + w), 0.0), "x", "right"), ((0.0, r2(y0 + h)), "y", "above")):
                start = (x0, 0.0) if lab == "x" else (0.0, y0)
                scene.shapes.append({"type": "arrow", "points": [start, end], "label": lab, "anchor": anc,
                                     "width": "", "color": "", "dashed": False})
        adders = [scene.add_polygon] * 5 + [scene.add_circle] * 3 + [scene.add_segment] * 2 + \
                 [scene.add_rectangle, scene.add_points]
        n_target = rng.randint(1, 4)
        for _ in range(40):
            if sum(s["type"] != "point" for s in scene.shapes) - axes * 2 >= n_target:
                break
            rng.choice(adders)()
        if len(scene.shapes) == 2 * axes:
            scene.add_points()

        scale = rng.uniform(55, 110)
        margin = rng.randint(30, 70)
        scale = min(scale, (self.max_side - 2 * margin) / max(w, h) * 0.999)
        size = (int(w * scale) + 2 * margin, int(h * scale) + 2 * margin)
        origin = (margin - x0 * scale, margin + (y0 + h) * scale)  # pixel of TikZ (0,0)
        bg = paper(rng)
        img = _draw(scene.shapes, size, origin, scale, bg, rng.randint(16, 28))
        meta = {"shapes": scene.shapes, "px_per_unit": scale, "origin_px": origin, "box": [x0, y0, w, h]}
        return Sample([img], format_conversation(to_tikz(scene.shapes)), meta)


def _draw(shapes: list[dict], size: tuple[int, int], origin: tuple[float, float], scale: float,
          bg: tuple[int, int, int], font_px: int) -> Image.Image:
    img = Image.new("RGB", (size[0] * SS, size[1] * SS), bg)
    d = ImageDraw.Draw(img)
    font = load_font("serif", font_px * SS)

    def px(p):
        return ((origin[0] + p[0] * scale) * SS, (origin[1] - p[1] * scale) * SS)

    def line_w(s):
        return max(round(1.6 * SS), round(WIDTHS[s.get("width", "")] / PT_PER_UNIT * scale * SS * 1.5))

    def path(points, s, closed=False):
        pts = [px(p) for p in points] + ([px(points[0])] if closed else [])
        color, lw = COLORS[s.get("color", "")], line_w(s)
        if s.get("dashed"):
            dash = 3 / PT_PER_UNIT * scale * SS * 1.5
            _dashed(d, pts, dash, color, lw)
        else:
            d.line(pts, fill=color, width=lw, joint="curve")

    for s in shapes:
        t = s["type"]
        if t == "polygon":
            path(s["points"], s, closed=True)
        elif t in ("segment", "arrow"):
            path(s["points"], s)
            if t == "arrow":
                (ax, ay), (bx, by) = px(s["points"][0]), px(s["points"][1])
                ang, L = math.atan2(by - ay, bx - ax), 9 * SS
                d.polygon([(bx, by), (bx - L * math.cos(ang - 0.4), by - L * math.sin(ang - 0.4)),
                           (bx - L * math.cos(ang + 0.4), by - L * math.sin(ang + 0.4))], fill=COLORS[""])
                _text(d, (bx, by), s["label"], s["anchor"], font)
        elif t == "rectangle":
            (ax, ay), (bx, by) = s["points"]
            path([(ax, ay), (bx, ay), (bx, by), (ax, by)], s, closed=True)
        elif t == "circle":
            c, r = s["center"], s["radius"]
            n = max(48, int(r * scale * 0.8))
            ring = [(c[0] + r * math.cos(2 * math.pi * k / n), c[1] + r * math.sin(2 * math.pi * k / n)) for k in range(n)]
            path(ring, s, closed=True)
        elif t == "point":
            x, y = px(s["at"])
            r = 1.5 / PT_PER_UNIT * scale * SS * 1.6
            d.ellipse([x - r, y - r, x + r, y + r], fill=COLORS[""])
            if s.get("label"):
                _text(d, (x, y), s["label"], s["anchor"], font)
    return img.resize(size, Image.LANCZOS)


def _dashed(d: ImageDraw.ImageDraw, pts: list, dash: float, color, lw: int) -> None:
    """Polyline with a dash pattern that runs on across vertices (dash on, dash off)."""
    walked = 0.0
    for a, b in zip(pts, pts[1:]):
        length = math.dist(a, b)
        if length == 0:
            continue
        ux, uy = (b[0] - a[0]) / length, (b[1] - a[1]) / length
        t = 0.0
        while t < length:
            phase = (walked + t) % (2 * dash)
            step = min(length - t, (dash if phase < dash else 2 * dash) - phase)
            if phase < dash:
                d.line([(a[0] + ux * t, a[1] + uy * t), (a[0] + ux * (t + step), a[1] + uy * (t + step))],
                       fill=color, width=lw)
            t += max(step, 1e-6)
        walked += length


def _text(d: ImageDraw.ImageDraw, at, label: str, anchor: str, font) -> None:
    dx, dy = ANCHORS[anchor]
    gap = font.size * 0.45 + 2 * SS
    x, y = at[0] + dx * gap, at[1] - dy * gap
    pil_anchor = {-1: "r", 0: "m", 1: "l"}[dx] + {-1: "t", 0: "m", 1: "s"}[dy]
    d.text((x, y), label, font=font, fill=COLORS[""], anchor=pil_anchor)
