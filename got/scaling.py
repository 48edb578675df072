"""Scaling laws: fit E = a·X^(-b) and E = a·X^(-b) + c to several runs; `got scaling fit`.

As in the OCR scaling-law study (docs/got_facts.md §6), the laws are fitted on the smaller runs and checked on the largest
one, held out: a law that only interpolates is no use for deciding what to train next. Fits are least squares in
log space (every run counts the same whatever its error level); c is the irreducible error, kept in [0, min(E)).

A RUN is any of (see docs/evaluation.md, "Run logs"):
- a `got train` output directory: `metrics.jsonl` (per-step `loss`), `summary.json` (`tokens_total`), and the
  result of `got eval --model RUN/checkpoints/.../model --out RUN/eval` in `RUN/eval/summary.json` (parameter
  count under "model", metrics per system);
- a `got eval` output directory or its summary.json;
- a flat JSON file `{"params": ..., "tokens": ..., "compute": ..., "edit_distance": ..., "cer": ..., "loss": ...}`.
compute defaults to 6·params·tokens FLOPs (the usual dense-transformer estimate) when no run logs `flops`.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

X_KEYS = ("params", "tokens", "compute")
Y_KEYS = ("edit_distance", "cer", "loss")
X_LABELS = {"params": "parameters N", "tokens": "training tokens D", "compute": "compute C (FLOPs)"}


# --------------------------------------------------------------------------------------------------- run logs
@dataclass
class RunPoint:
    name: str
    params: float | None = None
    tokens: float | None = None
    compute: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def x(self, key: str) -> float:
        value = getattr(self, key)
        if value is None:
            raise ValueError(f"run {self.name}: no {key!r} logged (needed for --x {key}); see docs/evaluation.md")
        return float(value)

    def y(self, key: str) -> float:
        if key not in self.metrics:
            have = ", ".join(sorted(self.metrics)) or "none"
            raise ValueError(f"run {self.name}: no {key!r} metric logged (has: {have}); see docs/evaluation.md")
        return float(self.metrics[key])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e})") from None
    return rows


def _from_json(point: RunPoint, data: dict[str, Any], system: str) -> None:
    """Fill a point from one JSON object: a `got eval` summary (has "systems"), the trainer's summary.json
    (has "tokens_total"), or a flat record. Later sources override earlier ones key by key."""
    model = data.get("model") if isinstance(data.get("model"), dict) else {}  # the trainer's "model" is a path
    for key in X_KEYS:
        value = model.get(key, data.get(key))
        if value is not None:
            setattr(point, key, float(value))
    if data.get("tokens_total") is not None:
        point.tokens = float(data["tokens_total"])
    if data.get("flops") is not None:
        point.compute = float(data["flops"])
    if "systems" in data:
        entry = data["systems"].get(system)
        if entry is None:
            raise ValueError(f"run {point.name}: eval summary has no system {system!r} "
                             f"(has: {', '.join(data['systems'])})")
        metrics = entry.get("all", {})
    else:
        metrics = data
    for key in Y_KEYS:
        if isinstance(metrics.get(key), (int, float)):
            point.metrics[key] = float(metrics[key])


def _from_train_log(point: RunPoint, rows: list[dict[str, Any]]) -> None:
    """Fill a point from the trainer's metrics.jsonl: cumulative tokens and params/flops where logged, and the
    final loss (last eval_loss if any, else the mean of the last 10% of logged training losses, less noisy)."""
    for row in rows:
        for src, dst in (("params", "params"), ("tokens", "tokens"), ("tokens_total", "tokens"),
                         ("flops", "compute")):
            if row.get(src) is not None:
                setattr(point, dst, float(row[src]))
    eval_losses = [r["eval_loss"] for r in rows if r.get("eval_loss") is not None]
    losses = [r["loss"] for r in rows if r.get("loss") is not None]
    if eval_losses:
        point.metrics["loss"] = float(eval_losses[-1])
    elif losses:
        tail = losses[-max(1, len(losses) // 10):]
        point.metrics["loss"] = float(sum(tail) / len(tail))


def load_run(path: str | Path, system: str = "got") -> RunPoint:
    """One run (directory or JSON file) as a RunPoint; a run with nothing readable is an error naming it.

    In a directory: metrics.jsonl (trainer), then summary.json (trainer's or got eval's), then eval/summary.json
    (got eval --out RUN/eval), each overriding what the previous ones said.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run {path}: no such file or directory")
    point = RunPoint(name=path.stem if path.is_file() else path.name)
    if path.is_file():
        _from_json(point, _read_json(path), system)
    else:
        sources = [path / "metrics.jsonl", path / "summary.json", path / "eval" / "summary.json"]
        if not any(f.is_file() for f in sources):
            raise ValueError(f"run {path}: holds neither metrics.jsonl nor summary.json nor eval/summary.json")
        for f in sources:
            if f.is_file():
                if f.suffix == ".jsonl":
                    _from_train_log(point, _read_jsonl(f))
                else:
                    _from_json(point, _read_json(f), system)
    if point.compute is None and point.params is not None and point.tokens is not None:
        point.compute = 6.0 * point.params * point.tokens
    return point


# ------------------------------------------------------------------------------------------------------ fitting
@dataclass
class PowerLaw:
    """E = a·X^(-b) + c (c = 0 for the pure law), fitted on `n` points with R² measured in log space."""

    a: float
    b: float
    c: float
    r2: float
    n: int
    offset: bool

    def __call__(self, x: float | np.ndarray) -> float | np.ndarray:
        return self.a * np.power(x, -self.b) + self.c

    def formula(self) -> str:
        tail = f" + {self.c:.4g}" if self.offset else ""
        return f"E = {self.a:.4g}·X^-{self.b:.4g}{tail}"


def _r2(log_y: np.ndarray, log_pred: np.ndarray) -> float:
    ss_tot = float(np.sum((log_y - log_y.mean()) ** 2))
    ss_res = float(np.sum((log_y - log_pred) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def fit_power_law(x: Sequence[float], y: Sequence[float], offset: bool = False) -> PowerLaw:
    """Least squares in log space. Pure law: linear regression of log E on log X (closed form). With offset:
    scipy least_squares on log(a·X^-b + c) - log E from several starting c, c bounded to [0, min E)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    need = 3 if offset else 2
    if len(x) < need:
        raise ValueError(f"fitting E = a·X^-b{' + c' if offset else ''} needs at least {need} runs, got {len(x)}")
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("power-law fits need positive X and E values (log space)")
    if len(np.unique(x)) < 2:
        raise ValueError("all runs have the same X; a power law cannot be fitted")
    x0 = float(np.exp(np.log(x).mean()))  # fit in X/x0 so the optimizer sees O(1) numbers even for FLOPs
    lx, ly = np.log(x / x0), np.log(y)
    slope, intercept = np.polyfit(lx, ly, 1)
    a_n, b = math.exp(intercept), -slope
    c = 0.0
    if offset:
        from scipy.optimize import least_squares

        def resid(p: np.ndarray) -> np.ndarray:
            return np.log(np.exp(p[0]) * np.exp(-p[1] * lx) + p[2]) - ly

        c_max = float(y.min()) * (1 - 1e-9)
        best = None
        for frac in (0.0, 0.3, 0.6, 0.9):
            c0 = frac * c_max
            start = np.log(np.clip(y - c0, 1e-12, None))  # re-fit the pure law on E - c0 for a sane start
            s, i = np.polyfit(lx, start, 1)
            sol = least_squares(resid, [i, -s, c0], bounds=([-np.inf, -np.inf, 0.0], [np.inf, np.inf, c_max]),
                                x_scale="jac", xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=20000)
            if best is None or sol.cost < best.cost:
                best = sol
        a_n, b, c = math.exp(best.x[0]), float(best.x[1]), float(best.x[2])
        c = 0.0 if c < 1e-9 * float(y.min()) else c  # the bound, not a floor: say 0, not 3e-29
    log_pred = np.log(a_n * np.exp(-b * lx) + c)
    return PowerLaw(a=float(a_n * x0**b), b=float(b), c=float(c), r2=_r2(ly, log_pred), n=len(x), offset=offset)


def fit_runs(points: Sequence[RunPoint], x_key: str, y_key: str) -> dict[str, Any]:
    """Fit both laws on all runs but the largest X, and score the prediction on that held-out run.

    With too few runs to hold one out (2 for the pure law, 3 with offset) the law is fitted on all of them and
    the held-out error is None. The fits on all runs are also returned, for extrapolation beyond them.
    """
    if len(points) < 2:
        raise ValueError(f"need at least 2 runs to fit a scaling law, got {len(points)}")
    pts = sorted(points, key=lambda p: p.x(x_key))
    x = np.array([p.x(x_key) for p in pts])
    y = np.array([p.y(y_key) for p in pts])
    result: dict[str, Any] = {
        "x": x_key, "y": y_key,
        "runs": [{"name": p.name, x_key: float(xi), y_key: float(yi)} for p, xi, yi in zip(pts, x, y)],
        "held_out": pts[-1].name,
    }
    for name, offset in (("power_law", False), ("power_law_offset", True)):
        need = 3 if offset else 2
        entry: dict[str, Any] = {}
        if len(pts) - 1 >= need:
            law = fit_power_law(x[:-1], y[:-1], offset)
            pred = float(law(x[-1]))
            entry = {"law": asdict(law), "held_out_pred": pred, "held_out_actual": float(y[-1]),
                     "held_out_rel_error": (pred - float(y[-1])) / float(y[-1])}
        if len(pts) >= need:
            entry["fit_all"] = asdict(fit_power_law(x, y, offset))
        else:
            entry["skipped"] = f"needs at least {need} runs"
        result[name] = entry
    return result


# --------------------------------------------------------------------------------------------------------- plot
def plot_fit(result: dict[str, Any], out: str | Path) -> Path:
    """Log-log PNG: fitted runs, the held-out run, and both laws extended across the whole range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key, y_key = result["x"], result["y"]
    x = np.array([r[x_key] for r in result["runs"]])
    y = np.array([r[y_key] for r in result["runs"]])
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    held = result["power_law"].get("held_out_pred") is not None
    ax.scatter(x[:-1] if held else x, y[:-1] if held else y, color="tab:blue", zorder=3, label="fitted runs")
    if held:
        ax.scatter(x[-1:], y[-1:], color="tab:red", marker="*", s=160, zorder=3, label=f"held out ({result['held_out']})")
    grid = np.geomspace(x.min() / 1.5, x.max() * 1.5, 200)
    for name, style in (("power_law", "-"), ("power_law_offset", "--")):
        entry = result[name]
        params = entry.get("law") or entry.get("fit_all")
        if params:
            law = PowerLaw(**params)
            err = entry.get("held_out_rel_error")
            label = law.formula() + (f" (held-out err {err:+.1%})" if err is not None else "") + f", R²={law.r2:.3f}"
            ax.plot(grid, law(grid), style, color="tab:gray" if law.offset else "black", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(X_LABELS[x_key])
    ax.set_ylabel(y_key.replace("_", " "))
    ax.set_title(f"{y_key} vs {x_key}: {len(x)} runs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def format_report(result: dict[str, Any]) -> str:
    x_key, y_key = result["x"], result["y"]
    lines = [f"{'run':<24} {x_key:>12} {y_key:>12}"]
    lines += [f"{r['name']:<24} {r[x_key]:>12.4g} {r[y_key]:>12.4g}" for r in result["runs"]]
    for name, title in (("power_law", "E = a·X^-b"), ("power_law_offset", "E = a·X^-b + c")):
        e = result[name]
        if "law" in e:
            f = e["law"]
            lines.append(f"{title:<16} a={f['a']:.4g} b={f['b']:.4g}" + (f" c={f['c']:.4g}" if f["offset"] else "")
                         + f" R²={f['r2']:.4f} (fit on {f['n']} runs); held-out {result['held_out']}: predicted "
                         f"{e['held_out_pred']:.4g}, actual {e['held_out_actual']:.4g}, "
                         f"error {e['held_out_rel_error']:+.2%}")
        elif "fit_all" in e:
            f = e["fit_all"]
            lines.append(f"{title:<16} a={f['a']:.4g} b={f['b']:.4g}" + (f" c={f['c']:.4g}" if f["offset"] else "")
                         + f" R²={f['r2']:.4f} (all {f['n']} runs; too few to hold one out)")
        else:
            lines.append(f"{title:<16} skipped: {e['skipped']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- CLI
def add_cli(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("fit", help="fit E = a·X^-b (+ c) to several runs, hold out the largest, plot log-log")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run dirs, got-eval summary.json files or flat run JSONs")
    p.add_argument("--x", choices=X_KEYS, default="params", help="scale variable (default params)")
    p.add_argument("--y", choices=Y_KEYS, default="edit_distance", help="error metric (default edit_distance)")
    p.add_argument("--system", default="got", help="which system's metrics to read from eval summaries")
    p.add_argument("--out", default="scaling_fit.png", help="log-log PNG path (default scaling_fit.png)")
    p.add_argument("--json", default=None, help="also write the fit as JSON here (default: next to the PNG)")


def cli_main(args: argparse.Namespace) -> int:
    points = [load_run(r, system=args.system) for r in args.runs]
    result = fit_runs(points, args.x, args.y)
    png = plot_fit(result, args.out)
    json_path = Path(args.json) if args.json else png.with_suffix(".json")
    json_path.write_text(json.dumps(result, indent=2))
    print(format_report(result))
    print(f"wrote {png} and {json_path}")
    return 0
