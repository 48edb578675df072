"""One rule turns a name into a model directory (got.checkpoint.resolve_model_dir): a model dir, a checkpoint
step dir, a training run dir, a repo id in the local Hugging Face cache, or nothing for the default model. The
README's flow (tiny stage 1 -> stage 2 -> `got chat --model RUN_DIR`) goes through it end to end."""
import json
import subprocess
import sys

import huggingface_hub.constants
import pytest
import torch

from got.checkpoint import resolve_model_dir, save_pretrained
from got.config import load_config
from got.inference import GOT
from got.modeling import GOTModel
from got.tokenizer import GOTTokenizer
from train_helpers import REPO, env, got_train


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny")
    save_pretrained(GOTModel(load_config("tiny")), d, tokenizer=GOTTokenizer.default())
    return d


def test_hub_cache_entry_loads_by_repo_id_offline(tiny_dir, tmp_path, monkeypatch):
    repo = tmp_path / "hub" / "models--someorg--tiny-got"
    sha = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    (repo / "snapshots" / sha).symlink_to(tiny_dir, target_is_directory=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model_dir("someorg/tiny-got") == repo / "snapshots" / sha
    got = GOT.from_pretrained("someorg/tiny-got", dtype="float32")
    assert got.config.to_dict() == load_config("tiny").to_dict()
    with pytest.raises(FileNotFoundError, match=r"^someorg/other: not a directory and not in the local Hugging Face "
                                                r"cache \(.*hub\)"):
        resolve_model_dir("someorg/other")


def test_checkpoint_and_file_names(tiny_dir, tmp_path):
    step = tmp_path / "run" / "checkpoints" / "step-00000004"
    (step / "model").mkdir(parents=True)
    (step / "trainer_state.json").write_text("{}")
    for f in tiny_dir.iterdir():
        (step / "model" / f.name).symlink_to(f)
    assert resolve_model_dir(tmp_path / "run") == step / "model"  # a run dir: its newest complete checkpoint
    assert resolve_model_dir(step) == step / "model"  # a checkpoint dir: its model/
    with pytest.raises(ValueError, match="config.json: a model is a directory, not a file"):
        resolve_model_dir(tiny_dir / "config.json")
    with pytest.raises(FileNotFoundError, match="empty: no model here"):
        (tmp_path / "empty").mkdir()
        resolve_model_dir(tmp_path / "empty")


@pytest.mark.slow
def test_readme_flow_stage1_stage2_then_chat_the_run_dir(tmp_path):
    from data_engines.plain import render_line
    import random

    s1, s2 = tmp_path / "tiny_stage1", tmp_path / "tiny_stage2"
    short = ["train.max_steps=2", "output.save_every=2", "data.samples_per_epoch=16"]
    got_train(["--stage", "1", "--config", "configs/tiny_stage1.yaml", f"output.dir={s1}", *short])
    got_train(["--stage", "2", "--config", "configs/tiny_stage2.yaml", f"output.dir={s2}",
               f"model.encoder_from={s1}", *short])
    image = tmp_path / "hello.png"
    render_line(random.Random(0), "en")[0].save(image)
    p = subprocess.run([sys.executable, "-m", "got.cli", "chat", str(image), "--model", str(s2), "--dtype", "float32",
                        "--max-new-tokens", "6"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    record = json.loads(p.stdout)
    got = GOT.from_pretrained(s2, dtype="float32")
    assert record["path"] == str(image) and 0 <= record["tokens"] <= 6
    assert got.chat(image, max_new_tokens=6) == record["text"]
