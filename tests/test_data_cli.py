"""`got data render`: byte-identical output for a seed whatever the workers, resume, shards, mix weights, errors."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from data_engines.base import ENGINES
from data_engines.cli import render
from data_engines.mix import Mixture, parse_engines

# cheap but varied: text lines/paragraphs, PDF slices, box/colour regions, 2-3 page documents, augmentations
FAST = dict(engines="plain,pdf,fine_grained,multi_page", seed=11, progress=False,
            options={"plain": {"layout": "paragraph"}, "pdf": {"layout": "line"}, "multi_page": {"pages": [2, 3]}},
            augment="paper=0.5,tia=0.3,bda=0.5,copypaste=0.5")


def _digests(root: Path, skip=("records.jsonl",)) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The same 8 samples rendered by 1 and by 2 worker processes."""
    root = tmp_path_factory.mktemp("render")
    m1 = render(n=8, out=root / "w1", workers=1, **FAST)
    m2 = render(n=8, out=root / "w2", workers=2, **FAST)
    return root, m1, m2


def test_same_seed_byte_identical_whatever_the_workers(rendered):
    root, m1, m2 = rendered
    a, b = _digests(root / "w1"), _digests(root / "w2")
    assert a == b and len([k for k in a if k.endswith(".png")]) >= 8
    assert m1 == m2 and m1["samples"] == 8 and m1["failed"] == 0
    data = json.loads((root / "w1" / "data.json").read_text())
    assert len(data) == 8
    for rec in data:  # GOT records whose images exist
        images = [rec["image"]] if isinstance(rec["image"], str) else rec["image"]
        assert all((root / "w1" / p).is_file() for p in images)
        assert rec["conversations"][0]["value"].startswith("<image>\n") and rec["conversations"][1]["value"]
    from got.prompts import parse_record

    paths, turns = parse_record(data[0], root / "w1")
    assert Path(paths[0]).is_file() and turns[0]["value"].startswith("<image>")
    render(n=2, out=root / "seed12", workers=1, **{**FAST, "seed": 12})
    other = _digests(root / "seed12")
    assert other["data.json"] != a["data.json"] and not set(other.values()) & set(a.values())


def test_resume_renders_only_what_is_missing(rendered, tmp_path):
    root, _, _ = rendered
    import shutil

    out = tmp_path / "resume"
    shutil.copytree(root / "w1", out)
    victim = sorted((out / "images").rglob("*.png"))[3]
    victim.unlink()
    log = (out / "records.jsonl").read_text().splitlines()
    (out / "records.jsonl").write_text("\n".join(log[:-1]) + "\n" + log[-1][: len(log[-1]) // 2])  # torn last line
    before = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    render(n=8, out=out, workers=1, **FAST)
    assert _digests(out) == _digests(root / "w1")  # the same bytes come back
    untouched = [p for p, t in before.items() if p.stat().st_mtime_ns == t]
    assert len(untouched) >= len(before) - 4  # only the deleted / torn samples were re-rendered
    render(n=10, out=out, workers=1, **FAST)  # extending n keeps the first 8 samples
    data = json.loads((out / "data.json").read_text())
    assert len(data) == 10 and data[:8] == json.loads((root / "w1" / "data.json").read_text())
    with pytest.raises(ValueError, match="different seed"):
        render(n=8, out=out, workers=1, **{**FAST, "seed": 99})


def test_shards_are_webdataset_tars_and_deterministic(tmp_path):
    kw = {**FAST, "augment": None}
    m = render(n=7, out=tmp_path / "a", workers=2, shards=True, shard_size=3, **kw)
    render(n=7, out=tmp_path / "b", workers=1, shards=True, shard_size=3, **kw)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    shards = sorted((tmp_path / "a" / "shards").glob("*.tar"))
    assert [s.name for s in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    keys = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            names = tar.getnames()
            for name in names:
                if name.endswith(".json"):
                    rec = json.loads(tar.extractfile(name).read())
                    images = [rec["image"]] if isinstance(rec["image"], str) else rec["image"]
                    assert all(i in names and i.startswith(name[:-5] + ".") for i in images)
                    keys.append(name[:-5])
    assert keys == [f"{i:08d}" for i in range(7)] and m["samples"] == 7
    from got.data import ShardSource  # the trainer reads them back

    assert len(ShardSource(str(tmp_path / "a" / "shards" / "*.tar"))) == 7
    before = {p: p.stat().st_mtime_ns for p in shards}
    shards[1].unlink()
    render(n=7, out=tmp_path / "a", workers=1, shards=True, shard_size=3, **kw)  # resume: only shard 1 again
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert shards[0].stat().st_mtime_ns == before[shards[0]] and shards[2].stat().st_mtime_ns == before[shards[2]]


def test_mix_weights_are_respected():
    weights = parse_engines(None, "plain=0.5,formula=0.2,table=0.3")
    assert list(weights) == ["plain", "formula", "table"] and abs(sum(weights.values()) - 1) < 1e-9
    mix = Mixture(weights, seed=3)
    for n in (10, 100, 1000, 10_000):  # any prefix is within +-2 of the exact share (Weyl sequence)
        counts = Counter(mix.engine_at(i) for i in range(n))
        for name, w in weights.items():
            assert abs(counts[name] - w * n) <= 2, (n, counts)
    counts = Counter(mix.engine_at(i) for i in range(5000, 5100))  # and so is any window
    assert all(abs(counts[k] - w * 100) <= 2 for k, w in weights.items())
    assert parse_engines("all", None) == {k: 1 / len(ENGINES) for k in ENGINES}
    with pytest.raises(ValueError, match="unknown data engine"):
        parse_engines("plain,nope", None)
    with pytest.raises(ValueError, match="--mix names"):
        parse_engines("plain", "pdf=1")


def test_manifest_counts_follow_the_mix(tmp_path):
    m = render(mix="plain=3,fine_grained=1", n=8, out=tmp_path, workers=1, seed=0, progress=False,
               options={"plain": {"layout": "line"}})
    weights = {"plain": 0.75, "fine_grained": 0.25}
    assert m["config"]["weights"] == weights and sum(m["counts"].values()) == 8
    assert m["counts"] == Counter(Mixture(weights, 0).engine_at(i) for i in range(8))
    assert all(abs(m["counts"][k] - 8 * w) <= 1 for k, w in weights.items())
    assert json.loads((tmp_path / "manifest.json").read_text()) == m


def _got(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "got.cli", "data", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_cli_help_lists_engines_in_order_and_renders(tmp_path):
    r = _got("render", "--help", cwd=tmp_path)
    assert r.returncode == 0
    epilog = r.stdout[r.stdout.index("engines (in this order)"):]
    positions = [epilog.index(f"  {name} ") for name in ENGINES]
    assert positions == sorted(positions)
    r = _got("render", "--engine", "plain", "--n", "3", "--out", str(tmp_path / "o"), "--workers", "2",
             "--opt", "plain.layout=line", "--opt", "plain.lang=zh", "--augment", "bda=0.5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "render" in r.stderr and "100%" in r.stderr  # the tqdm bar
    assert "3 samples" in r.stdout
    data = json.loads((tmp_path / "o" / "data.json").read_text())
    assert len(data) == 3 and all(any("\u4e00" <= c <= "\u9fff" for c in d["conversations"][1]["value"]) for d in data)


@pytest.mark.parametrize("args,message", [
    (["--engine", "nope"], "unknown data engine 'nope'"),
    (["--engine", "plain", "--augment", "blur"], "unknown augmentation 'blur'"),
    (["--engine", "plain", "--opt", "plain.colour=red"], "engine plain: bad option"),
    (["--engine", "plain", "--opt", "oops"], "expected ENGINE.KEY=VALUE"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    r = _got("render", *args, "--n", "2", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
