"""Scaling-law fits: exact recovery on synthetic laws, held-out prediction, run-log reading, CLI + PNG."""
import json

import numpy as np
import pytest

from got import scaling as S
from got.cli import main


def test_recovers_pure_power_law_within_1_percent():
    rng = np.random.default_rng(0)
    x = np.geomspace(1e6, 1e9, 7)
    y = 5.0 * x ** -0.3 * np.exp(rng.normal(0, 0.01, x.size))  # 1% multiplicative noise
    law = S.fit_power_law(x, y)
    assert law.b == pytest.approx(0.3, rel=0.01)
    assert law.a == pytest.approx(5.0, rel=0.2)  # a is exp(intercept at X=1), far outside the data: looser
    assert law.r2 > 0.999 and law.c == 0.0


def test_recovers_power_law_with_offset():
    x = np.geomspace(1e7, 1e10, 8)
    y = 40.0 * x ** -0.35 + 0.02
    law = S.fit_power_law(x, y, offset=True)
    assert law.b == pytest.approx(0.35, rel=0.01)
    assert law.c == pytest.approx(0.02, rel=0.01)
    assert law.a == pytest.approx(40.0, rel=0.05)
    # the pure law misses the floor: it under-predicts far out; the offset law does not
    pure = S.fit_power_law(x, y)
    assert pure.r2 < law.r2


def test_held_out_largest_run():
    x = np.geomspace(1e6, 1e9, 6)
    pts = [S.RunPoint(f"r{i}", params=float(v), metrics={"cer": float(3 * v ** -0.25)}) for i, v in enumerate(x)]
    result = S.fit_runs(pts[::-1], "params", "cer")  # order of the arguments does not matter
    assert result["held_out"] == "r5"
    pl = result["power_law"]
    assert pl["law"]["n"] == 5 and pl["held_out_rel_error"] == pytest.approx(0.0, abs=1e-9)
    assert pl["fit_all"]["b"] == pytest.approx(0.25)
    assert S.fit_runs(pts[:2], "params", "cer")["power_law_offset"]["skipped"]


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="at least 2 runs"):
        S.fit_power_law([1.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        S.fit_power_law([1.0, 2.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="no 'tokens' logged"):
        S.RunPoint("r", params=1.0).x("tokens")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        S.load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither metrics.jsonl nor summary.json"):
        S.load_run(tmp_path / "empty")


def test_run_log_formats(tmp_path):
    # `got train` output dir: metrics.jsonl (per-step loss), summary.json (tokens_total, model path),
    # plus eval/summary.json from `got eval --out RUN/eval` (param count, metrics per system)
    run = tmp_path / "tiny-a"
    (run / "eval").mkdir(parents=True)
    rows = [{"step": s, "loss": 4.0 - s * 0.1} for s in range(1, 21)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (run / "summary.json").write_text(json.dumps({"stage": "1", "steps": 20, "tokens_total": 20000,
                                                  "model": str(run / "checkpoints/step-00000020/model")}))
    (run / "eval" / "summary.json").write_text(json.dumps({
        "model": {"path": "x", "params": 2.5e6},
        "systems": {"got": {"all": {"n": 4, "edit_distance": 0.4, "cer": 0.5}}, "tesseract": {"all": {"cer": 0.1}}},
    }))
    p = S.load_run(run)
    assert (p.params, p.tokens, p.compute) == (2.5e6, 20000.0, 6 * 2.5e6 * 20000)
    assert p.y("edit_distance") == 0.4 and p.y("cer") == 0.5
    assert p.y("loss") == pytest.approx((2.1 + 2.0) / 2)  # mean of the last 10% (2 of 20) losses
    assert S.load_run(run, system="tesseract").y("cer") == 0.1
    with pytest.raises(ValueError, match="no system 'rapidocr'"):
        S.load_run(run, system="rapidocr")
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"params": 1e6, "tokens": 1e8, "edit_distance": 0.3}))
    assert S.load_run(flat).compute == 6e14


def test_cli_writes_png_and_json(tmp_path, capsys):
    runs = []
    for i, n in enumerate([1e6, 3e6, 1e7, 3e7, 1e8]):
        f = tmp_path / f"run{i}.json"
        f.write_text(json.dumps({"name": f"run{i}", "params": n, "tokens": 1e9, "edit_distance": 2.0 * n ** -0.2}))
        runs.append(str(f))
    out = tmp_path / "fit.png"
    assert main(["scaling", "fit", *runs, "--x", "params", "--y", "edit_distance", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fit = json.loads(out.with_suffix(".json").read_text())
    assert fit["power_law"]["law"]["b"] == pytest.approx(0.2)
    printed = capsys.readouterr().out
    assert "held-out run4" in printed and "b=0.2" in printed
    assert main(["scaling", "fit", runs[0], "--out", str(out)]) == 1  # one run: clear error, exit 1
    assert "need at least 2 runs" in capsys.readouterr().err
