"""Engine 8: bar / horizontal bar / line / pie charts with matplotlib (Agg); target a markdown table or a
python dict of the plotted values.

Values are rounded to the chart's number of decimals *before* plotting, so the numbers in the target are
exactly the plotted numbers; `Sample.meta` repeats them ("categories", "series", "title", "decimals") and
the figure of the last sample stays on `engine.fig` until the next render, so tests can read the artists.
Targets:
- markdown (default): an optional title line, a blank line, then `| <x label> | <series...> |` rows;
- dict: `{'title': ..., 'categories': [...], 'series': {'name': [values...]}}` (python literal).
One Figure is reused for every sample (no pyplot state), saved at a fixed dpi without metadata, so the PNG
is a pure function of the rng.
"""
from __future__ import annotations

import io
import random

from PIL import Image

from data_engines import text
from data_engines.base import Sample
from data_engines.fonts import font_path
from data_engines.structured import format_conversation, hex_color, paper, require

KINDS = ["bar", "bar", "barh", "line", "line", "pie"]
FAMILIES = {"en": ["sans", "serif", "liberation-sans", "liberation-serif"], "zh": ["cjk-sans", "cjk-serif"]}
PALETTES = ["tab10", "Set2", "Dark2", "tab20", "Paired", "Set1", "viridis", "plasma", "Pastel1"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
DPI = 100


def _categories(rng: random.Random, n: int, lang: str) -> list[str]:
    r = rng.random()
    if r < 0.2:
        start = rng.randrange(0, 12 - n + 1) if n <= 12 else 0
        return MONTHS[start:start + n] if lang == "en" else [f"{m + 1}月" for m in range(start, start + n)]
    if r < 0.4:
        y = rng.randint(1990, 2025 - n)
        return [str(y + i) for i in range(n)]
    if r < 0.5:
        y = rng.randint(2010, 2024)
        return [f"Q{i % 4 + 1} {y + i // 4}" for i in range(n)]
    out: list[str] = []
    while len(out) < n:
        w = "".join(text.words(rng, "zh", rng.randint(1, 2))) if lang == "zh" else \
            " ".join(text.words(rng, "en", rng.randint(1, 2))).title()
        if w not in out and len(w) <= 18:
            out.append(w)
    return out


def _label(rng: random.Random, lang: str, k: int = 3) -> str:
    if lang == "zh":
        return "".join(text.words(rng, "zh", rng.randint(1, k)))
    return " ".join(text.words(rng, "en", rng.randint(1, k))).title()


def _rotate_ticks(ax, angle: int) -> None:
    """Slanted category labels end under their tick (anchor right) instead of centred across it."""
    for label in ax.get_xticklabels():
        label.set_rotation(angle)
        if angle != 90:
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")


def fmt_value(v: float, decimals: int) -> str:
    return f"{v:.{decimals}f}"


def markdown_target(title: str, x_label: str, categories: list[str], series: dict[str, list[float]],
                    decimals: int) -> str:
    names = list(series)
    rows = [f"| {x_label} | " + " | ".join(names) + " |", "| " + " | ".join(["---"] * (len(names) + 1)) + " |"]
    for i, c in enumerate(categories):
        rows.append(f"| {c} | " + " | ".join(fmt_value(series[n][i], decimals) for n in names) + " |")
    return (f"{title}\n\n" if title else "") + "\n".join(rows)


def dict_target(title: str, categories: list[str], series: dict[str, list[float]], decimals: int) -> str:
    num = (lambda v: int(round(v))) if decimals == 0 else (lambda v: float(fmt_value(v, decimals)))
    return repr({"title": title, "categories": categories, "series": {k: [num(v) for v in vs] for k, vs in series.items()}})


class ChartEngine:
    """Random chart -> PNG + values table/dict."""

    name = "chart"

    def __init__(self, target: str = "markdown", chinese_prob: float = 0.2, max_side: int = 1024):
        if target not in ("markdown", "dict"):
            raise ValueError(f"chart target must be 'markdown' or 'dict', got {target!r}")
        require("matplotlib", "matplotlib", "the chart engine")
        from matplotlib import font_manager
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.target, self.chinese_prob, self.max_side = target, chinese_prob, max_side
        self.fig = Figure(dpi=DPI)
        FigureCanvasAgg(self.fig)
        self.font_names: dict[str, str] = {}
        for fams in FAMILIES.values():  # register by path: works even if matplotlib's font cache is stale
            for fam in fams:
                path = font_path(fam)
                font_manager.fontManager.addfont(path)
                self.font_names[fam] = font_manager.FontProperties(fname=path).get_name()

    def render(self, rng: random.Random) -> Sample:
        import matplotlib

        lang = "zh" if rng.random() < self.chinese_prob else "en"
        kind = rng.choice(KINDS)
        n = rng.randint(3, 7) if kind == "pie" else rng.randint(3, 12)
        categories = _categories(rng, n, lang)
        n_series = 1 if kind == "pie" else rng.choices([1, 2, 3, 4], [5, 3, 2, 1])[0]
        title = _label(rng, lang, 5) if rng.random() < 0.8 else ""
        x_label = _label(rng, lang, 2) if rng.random() < 0.6 else ("Category" if lang == "en" else "类别")
        y_label = _label(rng, lang, 3) if rng.random() < 0.6 else ""
        # Series names are drawn (legend) when there are several; a single series takes the value-axis label,
        # and a pie (no axes) the conventional header.
        if kind == "pie":
            x_label, names = ("Category", ["Share (%)"]) if lang == "en" else ("类别", ["占比(%)"])
        elif n_series == 1:
            names = [y_label or ("Value" if lang == "en" else "数值")]
        else:
            names = []
            while len(names) < n_series:
                nm = _label(rng, lang, 2)
                if nm not in names and nm not in categories:
                    names.append(nm)
        if kind == "pie":
            decimals = 1
            w = [rng.uniform(1, 10) for _ in range(n)]
            vals = [round(100 * x / sum(w), 1) for x in w]
            vals[-1] = round(100 - sum(vals[:-1]), 1)
            if vals[-1] <= 0:
                vals = [round(100 / n, 1)] * (n - 1) + [round(100 - round(100 / n, 1) * (n - 1), 1)]
            series = {names[0]: vals}
        else:
            mag = 10 ** rng.randint(1, 4)
            decimals = rng.choice([1, 1, 2] if mag == 10 else [0, 0, 1, 1, 2])
            neg = kind != "line" and rng.random() < 0.1
            series = {}
            for nm in names:
                base = rng.uniform(0.2, 1.0) * mag
                vals, v = [], base
                for _ in range(n):
                    v = v * rng.uniform(0.7, 1.3) if kind == "line" else rng.uniform(-0.5 if neg else 0.05, 1) * mag
                    vals.append(round(v, decimals) if decimals else float(round(v)))
                series[nm] = vals
        family = rng.choice(FAMILIES[lang])
        rc = {"font.family": [self.font_names[family], "DejaVu Sans"], "font.size": rng.uniform(9, 13),
              "axes.unicode_minus": False, "svg.hashsalt": "got", "text.parse_math": False}
        fig = self.fig
        fig.clf()
        w_in = rng.uniform(5, 9)
        fig.set_size_inches(w_in, w_in * rng.uniform(0.55, 0.8) if kind != "pie" else w_in * rng.uniform(0.7, 0.95))
        bg = paper(rng)
        fig.set_facecolor(hex_color(bg))
        with matplotlib.rc_context(rc):
            ax = fig.add_subplot(1, 1, 1)
            ax.set_facecolor(hex_color(bg))
            cmap = matplotlib.colormaps[rng.choice(PALETTES)]
            colors = [cmap(i / max(1, (n if kind == "pie" else n_series) - 1)) if cmap.N > 20 else cmap(i % cmap.N)
                      for i in range(n if kind == "pie" else n_series)]
            annotate = rng.random() < 0.5
            if kind == "pie":
                labels = iter(fmt_value(v, 1) + "%" for v in series[names[0]])
                ax.pie(series[names[0]], labels=categories, colors=colors, startangle=rng.choice([0, 90, 140]),
                       counterclock=rng.random() < 0.5, autopct=lambda _p: next(labels),
                       wedgeprops={"edgecolor": "white", "linewidth": rng.choice([0, 1, 2])})
                ax.set_aspect("equal")
            elif kind in ("bar", "barh"):
                width = rng.uniform(0.6, 0.85) / n_series
                edge = "black" if rng.random() < 0.3 else None
                xs = list(range(n))
                for s, (nm, vals) in enumerate(series.items()):
                    pos = [x - 0.5 * width * (n_series - 1) + s * width for x in xs]
                    bars = (ax.bar if kind == "bar" else ax.barh)(pos, vals, width, label=nm, color=colors[s],
                                                                   edgecolor=edge)
                    if annotate:
                        ax.bar_label(bars, labels=[fmt_value(v, decimals) for v in vals], fontsize=8, padding=2)
                (ax.set_xticks if kind == "bar" else ax.set_yticks)(xs, categories)
                if kind == "bar" and (n > 6 or max(len(c) for c in categories) > 6):
                    _rotate_ticks(ax, rng.choice([30, 45, 90]))
            else:
                xs = list(range(n))
                marker = rng.choice(["o", "s", "^", "D", None])
                for s, (nm, vals) in enumerate(series.items()):
                    ax.plot(xs, vals, marker=marker, label=nm, color=colors[s], linewidth=rng.uniform(1, 2.5),
                            linestyle=rng.choice(["-", "-", "--", "-."]))
                    if annotate:
                        for x, v in zip(xs, vals):
                            ax.annotate(fmt_value(v, decimals), (x, v), textcoords="offset points", xytext=(0, 5),
                                        ha="center", fontsize=8)
                ax.set_xticks(xs, categories)
                if n > 6 or max(len(c) for c in categories) > 6:
                    _rotate_ticks(ax, rng.choice([30, 45, 90]))
            if kind != "pie":
                ax.set_xlabel(x_label if kind == "bar" or kind == "line" else y_label)
                ax.set_ylabel(y_label if kind != "barh" else x_label)
                if rng.random() < 0.5:
                    ax.grid(True, axis="y" if kind != "barh" else "x", alpha=0.4)
                    ax.set_axisbelow(True)
                if rng.random() < 0.5:
                    ax.spines[["top", "right"]].set_visible(False)
                if n_series > 1:
                    ax.legend(loc=rng.choice(["best", "upper left", "upper right", "lower right"]), fontsize="small")
            if title:
                ax.set_title(title)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=DPI, facecolor=fig.get_facecolor(), metadata={"Software": None})
        img = Image.open(buf).convert("RGB")
        if max(img.size) > self.max_side:
            f = self.max_side / max(img.size)
            img = img.resize((round(img.width * f), round(img.height * f)), Image.LANCZOS)
        target = (markdown_target(title, x_label, categories, series, decimals) if self.target == "markdown"
                  else dict_target(title, categories, series, decimals))
        meta = {"kind": kind, "title": title, "x_label": x_label, "categories": categories, "series": series,
                "decimals": decimals, "annotated": annotate}
        return Sample([img], format_conversation(target), meta)
