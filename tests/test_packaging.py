"""The built wheel is usable without the checkout: presets, stage configs, DeepSpeed JSON and the tokenizer ship
inside it, and an installed copy (run from elsewhere, checkout not on the path) loads them."""
import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                        str(REPO)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("got_ocr-*.whl")
    return whl


def test_wheel_carries_configs_and_tokenizer(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {f"got/configs/model/{p}.yaml" for p in ("base", "stage1", "tiny", "tiny_stage1")}
    want |= {"got/configs/stage1.yaml", "got/configs/stage2.yaml", "got/configs/stage3.yaml",
             "got/configs/finetune.yaml", "got/configs/deepspeed/zero2.json", "got/assets/got_bpe.tiktoken",
             "stages/stage2_joint.py", "data_engines/plain.py", "got/assets/default/model.safetensors",
             "got/assets/default/config.json", "got/configs/model/default.yaml", "got/csrc/decode_attend.cpp"}
    assert want <= names, sorted(want - names)


def test_installed_wheel_finds_presets_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(site),
                        str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    code = ("import got.config as c, got.trainer as t; from got.tokenizer import GOTTokenizer; "
            "assert str(c.PRESET_DIR).startswith(%r), c.PRESET_DIR; "
            "print(c.list_presets(), c.load_config('base').vision.embed_dim, "
            "t.resolve_path('configs/deepspeed/zero2.json').is_file(), GOTTokenizer.default().vocab_size)" % str(site))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(env, PYTHONPATH=str(site)))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[0] == "['base', 'default', 'default_stage1', 'stage1', 'tiny', 'tiny_stage1'] 768 True 16601"


def test_default_model_reads_from_a_wheel_in_a_fresh_venv(wheel, tmp_path):
    """`GOT.from_pretrained()` with no name loads the default model that ships inside the wheel, and reads."""
    venv = tmp_path / "venv"
    r = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-compile", str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    from PIL import Image, ImageDraw

    from data_engines.fonts import load_font
    from got.inference import GOT
    from got.metrics import cer

    text = "The library itself should be portable\nto any system, not even POSIX is required."
    image = Image.new("RGB", (640, 110), "white")
    ImageDraw.Draw(image).multiline_text((20, 15), text, fill="black", font=load_font("serif", 22), spacing=14)
    image.save(tmp_path / "page.png")
    code = ("import got; from got.inference import GOT; "
            "print(got.__file__); print(repr(GOT.from_pretrained().chat('page.png')))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(py), "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    where, answer = r.stdout.splitlines()[:2]
    assert where.startswith(str(venv)), where
    answer = ast.literal_eval(answer)  # the repr printed above
    assert answer == GOT.from_pretrained().chat(tmp_path / "page.png") and cer(answer, text) <= 0.15, answer


def test_shell_scripts_parse():
    """Every shell script (the recipe, launchers, the GPU profile) is valid bash, so a typo does not wait for the
    machine that runs it (a GPU for benchmarks/gpu_profile.sh)."""
    scripts = sorted((REPO / "scripts").glob("*.sh")) + sorted((REPO / "benchmarks").glob("*.sh"))
    assert REPO / "benchmarks" / "gpu_profile.sh" in scripts
    for script in scripts:
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, f"{script.name}: {r.stderr}"
