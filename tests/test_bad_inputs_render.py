"""`got data render` against a hostile user (issue 13): killed and resumed renders end byte-identical to an
uninterrupted one, Ctrl-C is one line and exit 130, a resume with other settings is refused, numeric options are
checked, and a huge --n is never planned up front. Every refusal: non-zero exit, ONE stderr line naming the
input and the problem, no traceback, nothing written."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from got.cli import main as got_main

ROOT = Path(__file__).resolve().parents[1]
# plain paragraphs: ~50 samples/s on one core, so a 60-sample render takes about a second and can be killed midway
SAME = ["--engine", "plain", "--n", "60", "--opt", "plain.layout=paragraph", "--seed", "3"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _start(out: Path, args: list[str], workers: int = 2) -> subprocess.Popen:
    """`got data render ARGS --out OUT` in its own process group (as a shell job), stderr to OUT.stderr."""
    err = open(out.parent / f"{out.name}.stderr", "w")
    cmd = [sys.executable, "-m", "got.cli", "data", "render", *args, "--out", str(out), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=_env(), cwd=out.parent,
                            start_new_session=True)
    err.close()
    return proc


def _stderr(out: Path) -> str:
    return (out.parent / f"{out.name}.stderr").read_text()


def _finish(out: Path, args: list[str] = SAME, workers: int = 2) -> subprocess.Popen:
    proc = _start(out, args, workers)
    proc.wait(timeout=120)
    assert proc.returncode == 0, _stderr(out)
    return proc


def _records(out: Path) -> int:
    try:
        return (out / "records.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _wait_for(proc: subprocess.Popen, condition, timeout: float = 60) -> bool:
    """Poll until `condition()` holds (True) or the process ended / time ran out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.002)
    return False


def _group_gone(pgid: int, timeout: float = 10) -> bool:
    """No process of the render's group is left (its pool workers died with it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.01)
    os.killpg(pgid, signal.SIGKILL)
    return False


def _digests(root: Path) -> dict[str, str]:
    """Every file under root (records.jsonl, data.json, images, config.json, manifest.json) -> sha256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _message_lines(stderr: str) -> list[str]:
    """stderr without the tqdm bar ("render: ...\r"): the lines a person reads."""
    return [line for line in re.split(r"[\r\n]", stderr) if line.strip() and not line.startswith("render:")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, str]:
    """The 60 samples rendered in one go by one process."""
    out = tmp_path_factory.mktemp("reference") / "out"
    _finish(out, workers=1)
    digests = _digests(out)
    assert len([k for k in digests if k.endswith(".png")]) == 60
    indices = [json.loads(line)["index"] for line in (out / "records.jsonl").read_text().splitlines()]
    assert indices == list(range(60))  # index order, not completion order
    return digests


def test_same_seed_same_bytes_including_records_whatever_the_workers(reference, tmp_path):
    _finish(tmp_path / "w2", workers=2)
    assert _digests(tmp_path / "w2") == reference


def test_sigkill_at_three_points_then_rerun_is_byte_identical(reference, tmp_path):
    out = tmp_path / "killed"
    points = {"settings recorded, before the first record": lambda: (out / "config.json").is_file(),
              "15 records": lambda: _records(out) >= 15,
              "35 records": lambda: _records(out) >= 35}
    logged = []
    for name, reached in points.items():
        proc = _start(out, SAME, workers=2)
        assert _wait_for(proc, reached), f"the render ended before the kill point ({name}): {_stderr(out)}"
        proc.kill()  # SIGKILL to the main process only: its pool workers must not outlive it
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert _group_gone(proc.pid), "a pool worker outlived the killed render"
        logged.append(_records(out))
    assert logged[0] < logged[1] < logged[2] < 60, logged  # every kill landed mid-render, and each rerun resumed
    assert not (out / "manifest.json").exists() and not (out / "data.json").exists()  # not finished: no data set
    _finish(out, workers=2)  # the same command once more
    assert _digests(out) == reference


def test_ctrl_c_is_one_line_exit_130_and_the_same_command_resumes(reference, tmp_path):
    out = tmp_path / "ctrl_c"
    proc = _start(out, SAME, workers=2)
    assert _wait_for(proc, lambda: _records(out) >= 10), _stderr(out)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C: the main process and every pool worker
    proc.wait(timeout=60)
    err = _stderr(out)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = _message_lines(err)
    assert len(lines) == 1, lines
    assert "interrupted" in lines[0] and str(out) in lines[0] and "rerun the same command to resume" in lines[0]
    assert _group_gone(proc.pid)
    _finish(out, workers=1)
    assert _digests(out) == reference


def test_resume_fills_holes_and_torn_lines_back_to_the_same_bytes(reference, tmp_path):
    """Deleted images (holes below the last record) and a torn last line: the log ends sorted, byte-identical."""
    out = tmp_path / "holes"
    _finish(out, workers=1)
    for index in (4, 31):
        (out / f"images/000/{index:08d}.png").unlink()
    log = (out / "records.jsonl").read_bytes()
    (out / "records.jsonl").write_bytes(log[:-40])  # torn: the last sample is logged without its newline
    (out / "manifest.json").unlink()
    _finish(out, workers=2)
    assert _digests(out) == reference


# ---------------------------------------------------------------------------------------- a resume must match

@pytest.fixture(scope="module")
def partial(tmp_path_factory) -> Path:
    """The issue's case: `--n 150 --seed 0` killed after a few samples (config.json and records, no manifest)."""
    out = tmp_path_factory.mktemp("partial") / "out"
    proc = _start(out, ["--engine", "plain", "--n", "150", "--opt", "plain.layout=paragraph"], workers=1)
    assert _wait_for(proc, lambda: _records(out) >= 3), _stderr(out)
    proc.kill()
    proc.wait(timeout=30)
    assert not (out / "manifest.json").exists()
    return out


def _got(capsys, *argv: str) -> tuple[int, str]:
    """Run `got ARGV` in this process (an escaping exception fails the test: that is the traceback case)."""
    rc = got_main(list(argv))
    return rc, capsys.readouterr().err


@pytest.fixture
def no_rendering(monkeypatch):
    """A refusal must come before any sample: should one slip through, fail at once instead of rendering."""
    from data_engines import cli

    def started(*args, **kwargs):
        raise AssertionError("rendering started")

    monkeypatch.setattr(cli, "_render_images", started)
    monkeypatch.setattr(cli, "_render_shards", started)


def _assert_one_line(rc: int, err: str, *needles: str) -> str:
    assert rc == 1 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _edit_config(key: str, value):
    def edit(out: Path) -> None:
        config = json.loads((out / "config.json").read_text())
        target = config
        *parents, last = key.split(".")
        for k in parents:
            target = target[k]
        target[last] = value
        (out / "config.json").write_text(json.dumps(config))
    return edit


RESUMES = [  # (id, arguments instead of the partial render's, setup of the folder, words the message must hold)
    ("seed", ["--n", "150", "--seed", "1"], None, ["different seed (0 there, 1 now)"]),
    ("mix", ["--n", "150", "--mix", "plain=1,fine_grained=1"], None, ["different weights"]),
    ("option", ["--n", "150", "--opt", "plain.layout=line"], None, ["different options", "line"]),
    ("augment", ["--n", "150", "--augment", "bda=0.5"], None, ["different augment"]),
    ("smaller_n", ["--n", "100"], None, ["--n 150", "100-149"]),
    ("format", ["--n", "150", "--shards"], None, ["different format (images there, shards now)"]),
    ("engine_version", ["--n", "150"], _edit_config("versions.Pillow", "0.0.1"), ["versions.Pillow (0.0.1 there"]),
    ("unrecorded", ["--n", "150"], lambda out: (out / "config.json").unlink(), ["settings were not recorded"]),
    ("unreadable", ["--n", "150"], lambda out: (out / "config.json").write_text("{\"n\": 15"), ["unreadable"]),
]


@pytest.mark.parametrize("args,setup,words", [r[1:] for r in RESUMES], ids=[r[0] for r in RESUMES])
def test_resume_with_other_settings_is_refused(partial, tmp_path, capsys, no_rendering, args, setup, words):
    out = tmp_path / "out"
    shutil.copytree(partial, out)
    if setup:
        setup(out)
    before = _digests(out)
    base = ["--engine", "plain", "--opt", "plain.layout=paragraph"]
    if "--mix" in args:
        base = base[2:]
    if "--opt" in args:
        base = base[:2]
    rc, err = _got(capsys, "data", "render", *base, *args, "--out", str(out), "--workers", "1")
    line = _assert_one_line(rc, err, f"--out {out}", *words)
    if setup is None:
        assert "--overwrite" in line
    assert _digests(out) == before  # nothing written, nothing mixed in


def test_overwrite_starts_over(partial, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(partial, out)
    (out / "notes.txt").write_text("mine")  # not the render's: --overwrite leaves it alone
    rc, err = _got(capsys, "data", "render", "--engine", "plain", "--opt", "plain.layout=line", "--n", "4",
                   "--seed", "1", "--out", str(out), "--workers", "1", "--overwrite")
    assert rc == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 1 and config["n"] == 4 and config["options"] == {"plain": {"layout": "line"}}
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert len(list((out / "images").rglob("*.png"))) == 4  # the seed-0 images are gone
    assert json.loads((out / "manifest.json").read_text())["config"]["seed"] == 1
    assert (out / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------------------- numeric options

NUMBERS = [
    (["--n", "1.5"], "--n must be a whole number"),
    (["--n", "0"], "--n must be >= 1"),
    (["--n", "-3"], "--n must be >= 1"),
    (["--n", "inf"], "--n must be a finite integer"),
    (["--n", "nan"], "--n must be a finite integer"),
    (["--n", "many"], "--n must be an integer, got 'many'"),
    (["--n", "1e400"], "--n must be <="),
    (["--n", "3", "--workers", "0"], "--workers must be >= 1"),
    (["--n", "3", "--workers", "100000"], "--workers must be <="),
    (["--n", "3", "--seed", "x"], "--seed must be an integer"),
    (["--n", "3", "--shards", "--shard-size", "0"], "--shard-size must be >= 1"),
    (["--n", "3", "--mix", "plain=inf"], "--mix: weight of plain must be a finite number > 0, got 'inf'"),
    (["--n", "3", "--mix", "plain=nan"], "--mix: weight of plain must be a finite number > 0"),
    (["--n", "3", "--mix", "plain=-1,fine_grained=2"], "--mix: weight of plain must be a finite number > 0"),
    (["--n", "3", "--mix", "plain=0,fine_grained=1"], "--mix: weight of plain must be a finite number > 0, got '0'"),
    (["--n", "3", "--mix", "plain=1e308,fine_grained=1e308"], "--mix: the weights must sum to a finite number"),
    (["--n", "3", "--mix", "plain=1,plain=2"], "--mix: plain is given twice"),
    (["--n", "3", "--mix", "plain=lots"], "--mix: weight of plain must be a number"),
    (["--n", "3", "--opt", "plain.format_prob=.nan"], "--opt plain.format_prob: nan is not a finite number"),
    (["--n", "3", "--opt", "plain.format_prob=.inf"], "--opt plain.format_prob: inf is not a finite number"),
    (["--n", "3", "--augment", "bda=2"], "--augment: augmentation bda: probability must be in [0, 1]"),
]


@pytest.mark.parametrize("args,message", NUMBERS, ids=[" ".join(a) for a, _ in NUMBERS])
def test_numeric_options_are_checked_and_named(tmp_path, capsys, no_rendering, args, message):
    if "--mix" not in args and "--engine" not in args:
        args = ["--engine", "plain", *args]
    out = tmp_path / "out"
    workers = [] if "--workers" in args else ["--workers", "1"]
    rc, err = _got(capsys, "data", "render", *args, "--out", str(out), *workers)
    _assert_one_line(rc, err, message)
    assert not out.exists()  # refused before anything was written


def test_out_that_is_a_file_is_one_line(tmp_path, capsys, no_rendering):
    (tmp_path / "taken").write_text("x")
    rc, err = _got(capsys, "data", "render", "--engine", "plain", "--n", "2", "--out", str(tmp_path / "taken"))
    _assert_one_line(rc, err, f"--out {tmp_path / 'taken'}", "is a file, not a folder")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.mark.parametrize("fmt", ["images", "shards"])
def test_huge_n_starts_at_once_in_bounded_memory(tmp_path, fmt):
    """--n 1e12 is never materialised as a plan: samples arrive at once, memory stays small, Ctrl-C ends it."""
    out = tmp_path / fmt
    args = ["--engine", "plain", "--opt", "plain.layout=line", "--n", "1e12"]
    args += ["--shards", "--shard-size", "2"] if fmt == "shards" else []
    if fmt == "images":
        done = lambda: _records(out) >= 3  # noqa: E731
    else:
        done = (out / "shards" / "shard-000001.json").is_file
    proc = _start(out, args, workers=2)
    try:
        assert _wait_for(proc, done, timeout=60), _stderr(out)
        if Path("/proc").is_dir():
            assert _rss_kib(proc.pid) < 1_000_000  # a plan of 1e12 indices would need terabytes
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # never leave a render of 1e12 samples running
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    err = _stderr(out)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert len(_message_lines(err)) == 1
    assert json.loads((out / "config.json").read_text())["n"] == 10**12
