"""`got train` launched the way users launch it (a plain process, and torchrun with 2 ranks over gloo):
exact resume after a kill, stage chaining 1 -> 2 -> 3, ZeRO-2 on 2 ranks, bad samples counted in the run log."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from train_helpers import bad_records, got_train, metrics, render_lines, weights, write_json

pytestmark = pytest.mark.slow
TINY = ["train.global_batch_size=4", "train.micro_batch_size=2", "data.max_length=128", "output.keep_last=5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 plain-engine line slices + one of each bad sample (unreadable, missing, too long, wrong <image>)."""
    root = tmp_path_factory.mktemp("train_data")
    return write_json(root / "train.json", render_lines(root, 8, max_chars=24) + bad_records(root))


def _changed(a: dict, b: dict, prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return any(not torch.equal(a[k], b[k]) for k in keys)


def test_resume_after_kill_is_exact(data, tmp_path):
    """10 steps straight == 5 steps + SIGKILL while writing the step-10 checkpoint + --resume auto: same losses and
    weights, bit for bit. tiny_stage1 has OPT dropout 0.1, so the RNG states must be restored too; ZeRO-2 too."""
    args = ["--stage", "1", "--config", "configs/tiny_stage1.yaml", "--data", str(data), *TINY,
            "train.max_steps=10", "output.save_every=5", "train.deepspeed=configs/deepspeed/zero2.json"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    got_train([*args, f"output.dir={straight}"])
    killed = got_train([*args, f"output.dir={broken}"], check=False, GOT_TRAIN_KILL_AT="save:10")
    assert killed.returncode != 0, "the fault hook did not kill the run"
    ckpts = broken / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [".tmp-step-00000010", "step-00000005"]
    assert any((ckpts / ".tmp-step-00000010" / "deepspeed").iterdir())  # half-written: DeepSpeed state, no more
    # and a step dir without its trainer_state.json (a partial copy): never resumed from either
    shutil.copytree(ckpts / "step-00000005", ckpts / "step-00000009")
    (ckpts / "step-00000009" / "trainer_state.json").unlink()
    got_train([*args, f"output.dir={broken}", "--resume", "auto"])
    assert "resumed from" in (broken / "train.log").read_text() and "step-00000005 at step 5" in (
        broken / "train.log").read_text()

    a, b = metrics(straight), metrics(broken)
    assert [r["step"] for r in b] == list(range(1, 11))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]                      # identical, not approximately
    assert [r["lr"] for r in a] == [r["lr"] for r in b]
    wa, wb = weights(straight / "checkpoints/step-00000010/model"), weights(broken / "checkpoints/step-00000010/model")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a[-1]["loss"] < a[0]["loss"]
    assert (straight / "model").resolve() == (straight / "checkpoints/step-00000010/model").resolve()

    # the vision tower really trains (the original GOT ran it under no_grad): it changed between checkpoints
    w5 = weights(straight / "checkpoints/step-00000005/model")
    assert _changed(w5, wa, "vision_tower.") and _changed(w5, wa, "projector.") and _changed(w5, wa, "decoder.")

    # bad samples: skipped, counted and logged by path, in both runs alike
    summary = json.loads((straight / "summary.json").read_text())
    log = (straight / "train.log").read_text()
    assert summary["skipped_total"] > 0 and summary["skipped_total"] == json.loads(
        (broken / "summary.json").read_text())["skipped_total"]
    assert f"{summary['skipped_total']} bad samples skipped" in log
    for needle in ("broken.png", "missing.png", "too long", "<image> placeholders"):
        assert needle in log, needle
    from PIL import Image

    with Image.open(straight / "loss.png") as png:  # the trainer's plot: 7 x 4 in at 120 dpi
        assert png.format == "PNG" and png.size == (840, 480)


def test_stage_chain_and_two_rank_zero2(data, tmp_path):
    """stage 1 -> stage 2 (encoder loaded by name, equal; trained on 2 ranks with ZeRO-2: identical weights on both
    ranks, loss falls) -> stage 3 (encoder frozen: bit-identical after training; decoder and projector changed)."""
    s1, s2, s3 = tmp_path / "s1", tmp_path / "s2", tmp_path / "s3"
    got_train(["--stage", "1", "--config", "configs/tiny_stage1.yaml", "--data", str(data), *TINY,
               "train.max_steps=2", f"output.dir={s1}"])
    enc1 = {k: v for k, v in weights(s1 / "checkpoints/step-00000002/model").items() if k.startswith("vision_tower.")}

    # stage 2 builds its model from the stage-1 run: the encoder is the stage-1 encoder, exactly
    from got.trainer import load_train_config
    from stages import get_recipe

    cfg = load_train_config("configs/tiny_stage2.yaml", [f"model.encoder_from={s1}"])
    model, _ = get_recipe("2").build(cfg)
    assert model.config.decoder_type == "qwen2"
    got = {f"vision_tower.{k}": v for k, v in model.vision_tower.state_dict().items()}
    assert got.keys() == enc1.keys() and all(torch.equal(got[k], enc1[k]) for k in enc1)

    got_train(["--stage", "2", "--config", "configs/tiny_stage2.yaml", "--data", str(data), *TINY,
               f"model.encoder_from={s1}", "train.micro_batch_size=1", "train.max_steps=8",
               "train.deepspeed=configs/deepspeed/zero2.json", f"output.dir={s2}"], nproc=2)
    summary = json.loads((s2 / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_identical"], summary["rank_fingerprints"]
    losses = [r["loss"] for r in metrics(s2)]
    assert len(losses) == 8 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses

    got_train(["--stage", "3", "--config", "configs/tiny_stage3.yaml", "--data", str(data), *TINY,
               f"model.init_from={s2}", "train.max_steps=3", "train.lr=1e-3", "train.gradient_checkpointing=true",
               f"output.dir={s3}"])
    w2, w3 = weights(s2 / "checkpoints/step-00000008/model"), weights(s3 / "checkpoints/step-00000003/model")
    assert not _changed(w2, w3, "vision_tower.")
    assert _changed(w2, w3, "decoder.") and _changed(w2, w3, "projector.")
    start = next(line for line in (s3 / "train.log").read_text().splitlines() if "start stage 3" in line)
    assert "vision_tower" in start                                                   # the log says what was frozen


def test_a_run_that_only_skips_fails(tmp_path):
    """Every sample unusable (missing images, no answer): no "trained" model, a non-zero exit and one line why."""
    ok = {"from": "human", "value": "<image>\nOCR: "}
    records = [{"image": f"missing{i}.png", "conversations": [ok, {"from": "gpt", "value": "x"}]} for i in range(6)]
    data = write_json(tmp_path / "bad.json", records)
    p = got_train(["--stage", "1", "--config", "configs/tiny_stage1.yaml", "--data", str(data), *TINY,
                   "train.max_steps=3", f"output.dir={tmp_path / 'run'}"], check=False)
    err = [line for line in p.stderr.splitlines() if line.startswith("got train:")]
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert len(err) == 1 and "12 of 12 samples skipped in 3 steps" in err[0], err
    assert not (tmp_path / "run" / "summary.json").exists()
