"""Trainer and data pieces, in process (no DeepSpeed start): config, schedule, freezing, optimizer groups,
checkpoint selection, data order, bad-sample skips, collation and packing. The launched runs are in
test_train_runs.py and test_train_overfit.py."""
from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import pytest
import torch

from got.data import (Collator, Example, JsonSource, MixedDataset, SampleEncoder, ShardSource, Skip, StepSampler,
                      build_source)
from got.trainer import (DEFAULTS, apply_freeze, deepspeed_config, latest_checkpoint, list_checkpoints,
                         load_train_config, param_groups, warmup_cosine)
from train_helpers import bad_records, render_lines, write_json

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny():
    from got.config import load_config
    from got.modeling import GOTModel
    from got.tokenizer import GOTTokenizer

    torch.manual_seed(0)
    cfg = load_config("tiny")
    return GOTModel(cfg), GOTTokenizer.default()


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    root = tmp_path_factory.mktemp("lines")
    records = render_lines(root, 6, max_chars=30)
    return root, records


def encoder_for(model, tok, max_length=256):
    c = model.config
    return SampleEncoder(tok, c.image_size, c.image_token_len, max_length)


def encoded_lines(model, tok, lines, path, n: int) -> list:
    """The first n rendered line records, written to path and encoded as the trainer reads them."""
    root, records = lines
    src, encoder = JsonSource(write_json(path, records), image_root=root), encoder_for(model, tok)
    return [src.get(i, encoder) for i in range(n)]


# ---- config ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["stage1", "stage2", "stage3", "finetune", "tiny_stage1", "tiny_stage2",
                                  "tiny_stage3", "tiny_finetune"])
def test_shipped_configs_load(name):
    cfg = load_train_config(REPO / "configs" / f"{name}.yaml")
    assert set(cfg) == set(DEFAULTS)
    for spec in cfg["data"]["sources"]:  # every source entry is well-formed (engines are not built here)
        assert sum(k in spec for k in ("json", "shards", "engine")) == 1
    ds = deepspeed_config(dict(cfg, train=dict(cfg["train"], global_batch_size=cfg["train"]["micro_batch_size"])), 1)
    assert ds["gradient_accumulation_steps"] == 1


def test_paper_settings():
    s1, s2, s3 = (load_train_config(f"configs/stage{i}.yaml") for i in (1, 2, 3))
    assert (s1["data"]["max_length"], s2["data"]["max_length"], s3["data"]["max_length"]) == (4096, 6000, 8192)
    assert (s1["train"]["lr"], s2["train"]["lr"], s3["train"]["lr"]) == (1e-4, 1e-4, 2e-5)
    assert s1["train"]["global_batch_size"] == 128 and s1["train"]["epochs"] == 3 and s2["train"]["epochs"] == 1
    assert s1["freeze"] == [] and s2["freeze"] == [] and s3["freeze"] == ["vision_tower"]


def test_overrides_and_errors():
    cfg = load_train_config("configs/tiny_stage1.yaml", ["train.lr=2e-5", "freeze=[vision_tower]", "output.dir=x/y"])
    assert cfg["train"]["lr"] == 2e-5 and cfg["freeze"] == ["vision_tower"] and cfg["output"]["dir"] == "x/y"
    with pytest.raises(ValueError, match="train.lrr"):
        load_train_config("configs/tiny_stage1.yaml", ["train.lrr=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_train_config("configs/tiny_stage1.yaml", ["train.lr"])
    with pytest.raises(ValueError, match="encoder"):
        load_train_config("configs/tiny_stage1.yaml", ["freeze=[encoder]"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_train_config("configs/nope.yaml")
    cfg["train"]["global_batch_size"] = 10
    with pytest.raises(ValueError, match="multiple"):
        deepspeed_config(cfg, 1)


def test_warmup_cosine():
    f = warmup_cosine(4, 20, 0.1)
    assert f(0) == pytest.approx(0.25) and f(3) == pytest.approx(1.0) and f(4) == pytest.approx(1.0)
    assert f(20) == pytest.approx(0.1)
    after = [f(s) for s in range(4, 21)]
    assert all(a >= b for a, b in zip(after, after[1:]))
    assert f(12) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


# ---- freezing and optimizer groups ---------------------------------------------------------------------------------
def test_freeze_and_param_groups(tiny):
    import copy

    model = copy.deepcopy(tiny[0])
    apply_freeze(model, ["vision_tower"])
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    groups = param_groups(model, 0.1)
    in_opt = {id(p) for g in groups for p in g["params"]}
    assert not in_opt & {id(p) for p in model.vision_tower.parameters()}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 0.1
    assert "projector.bias" in no_decay and "projector.weight" not in no_decay
    assert any("embed_tokens" in n for n in no_decay) and any("norm" in n for n in no_decay)
    with pytest.raises(ValueError, match="nothing to train"):
        apply_freeze(model, ["vision_tower", "projector", "decoder"])


# ---- checkpoints -------------------------------------------------------------------------------------------------
def test_resume_auto_ignores_incomplete(tmp_path):
    for name, complete in [("step-00000005", True), ("step-00000003", True), ("step-00000009", False),
                           (".tmp-step-00000010", True), ("step-x", True)]:
        (tmp_path / name / "deepspeed").mkdir(parents=True)
        if complete:
            (tmp_path / name / "trainer_state.json").write_text("{}")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003", "step-00000005"]
    assert latest_checkpoint(tmp_path).name == "step-00000005"
    assert latest_checkpoint(tmp_path / "none") is None


# ---- data order ------------------------------------------------------------------------------------------------
def _stream(size, micro, accum, world, start=0, steps=6):
    per_step = []
    samplers = [iter(StepSampler(size, micro, accum, world, r, seed=3, start_step=start, total_steps=start + steps))
                for r in range(world)]
    for _ in range(steps):
        got = []
        for _ in range(accum):
            for it in samplers:
                got += next(it)
        per_step.append(sorted(got))
    return per_step


def test_sampler_is_world_size_independent_and_resumable():
    one = _stream(40, micro=4, accum=2, world=1, steps=10)         # global batch 8, 5 steps/epoch
    two = _stream(40, micro=2, accum=2, world=2, steps=10)
    assert one == two
    assert _stream(40, 4, 2, 1, start=3, steps=7) == one[3:]        # resume = continue the same stream
    epoch0 = [j for step in one[:5] for e, j in step]
    assert sorted(epoch0) == list(range(40)) and {e for step in one[5:] for e, _ in step} == {1}
    assert one[5] != one[0]                                          # a new permutation each epoch


def test_mix_weights_and_passes(tiny, lines, tmp_path):
    root, records = lines
    a = JsonSource(write_json(tmp_path / "a.json", records[:4]))
    b = JsonSource(write_json(tmp_path / "b.json", records[4:]))
    enc = encoder_for(*tiny)
    ds = MixedDataset([a, b], [3.0, 1.0], enc, samples_per_epoch=8, seed=0)
    assert ds.counts == [6, 2]
    picks = [ds.locate(0, j) for j in range(8)]
    assert [s for s, _ in picks] == [0] * 6 + [1] * 2
    # source b (2 records, 2 draws per epoch) is visited in full every epoch; source a over passes
    assert sorted(i for s, i in picks if s == 1) == [0, 1]
    seen_a = [ds.locate(e, j)[1] for e in range(2) for j in range(6)]
    assert sorted(seen_a[:4]) == [0, 1, 2, 3] and sorted(seen_a[4:8]) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="samples_per_epoch"):
        MixedDataset([build_source({"engine": "plain"}, 0)], [1.0], enc, None)


def test_engine_source_is_deterministic(tiny):
    enc = encoder_for(*tiny, max_length=512)
    src = build_source({"engine": "plain", "options": {"layout": "line", "lang": "en"}}, seed=5, index=1)
    x, y = src.get(7, enc), src.get(7, enc)
    assert isinstance(x, Example) and x.input_ids == y.input_ids and torch.equal(x.pixel_values, y.pixel_values)
    assert src.get(8, enc).input_ids != x.input_ids
    with pytest.raises(ValueError, match="unknown keys"):
        build_source({"engine": "plain", "image_root": "x"}, 0)


# ---- bad samples and collation ---------------------------------------------------------------------------------
def test_bad_samples_are_skipped_with_path_and_reason(tiny, lines, tmp_path):
    root, records = lines
    src = JsonSource(write_json(root / "mixed.json", records[:2] + bad_records(root)))
    enc = encoder_for(*tiny, max_length=256)
    items = [src.get(i, enc) for i in range(len(src))]
    assert [type(x).__name__ for x in items] == ["Example", "Example", "Skip", "Skip", "Skip", "Skip"]
    broken, missing, long, wrong = items[2:]
    assert "broken.png" in broken.origin and "missing.png" in missing.origin
    assert "too long" in long.reason and "<image>" in wrong.reason
    batch = Collator(tiny[1].endoftext_id, 256)(items)
    assert batch["num_samples"] == 2 and len(batch["skipped"]) == 4     # nothing substituted
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape[0] == 2


def test_ms_swift_jsonl(tiny, lines, tmp_path):
    """ms-swift `messages` records in a .jsonl encode to the same ids as the GOT-format record."""
    model, tok = tiny
    root, records = lines
    got = records[0]
    swift = {"messages": [{"role": "user", "content": "<image>OCR: "},
                          {"role": "assistant", "content": got["conversations"][1]["value"]}],
             "images": [got["image"]]}
    (tmp_path / "s.jsonl").write_text(json.dumps(swift) + "\n")
    a = JsonSource(tmp_path / "s.jsonl", image_root=root).get(0, encoder_for(model, tok))
    b = JsonSource(write_json(tmp_path / "g.json", [got]), image_root=root).get(0, encoder_for(model, tok))
    assert isinstance(a, Example) and a.input_ids == b.input_ids and a.labels == b.labels


def test_collate_right_pads_and_masks(tiny, lines, tmp_path):
    model, tok = tiny
    records = lines[1]
    items = encoded_lines(model, tok, lines, tmp_path / "d.json", 3)
    batch = Collator(tok.endoftext_id, 256)(items)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    for r, ex in enumerate(items):
        n = len(ex.input_ids)
        assert ids[r, :n].tolist() == ex.input_ids and mask[r, :n].all() and not mask[r, n:].any()
        assert (ids[r, n:] == tok.endoftext_id).all() and (labels[r, n:] == -100).all()
        sup = [t for t, lab in zip(ex.input_ids, ex.labels) if lab != -100]
        assert tok.decode(sup) == records[r]["conversations"][1]["value"] + "<|im_end|>"
    assert torch.equal(batch["pixel_values"], torch.cat([ex.pixel_values for ex in items]))
    assert (ids == model.config.img_pad_id).sum() == 3 * model.config.image_token_len


@pytest.mark.parametrize("preset", ["tiny", "tiny_stage1"])
def test_token_loss_equals_full_logits_loss(preset, tiny, lines, tmp_path):
    """The trainer's loss (logits only at supervised positions) == cross entropy over the full logits."""
    from got.config import load_config
    from got.modeling import GOTModel
    from got.trainer import TokenLoss, _token_loss_sum

    torch.manual_seed(0)
    model, tok = GOTModel(load_config(preset)).eval(), tiny[1]
    b = Collator(tok.endoftext_id, 256)(encoded_lines(model, tok, lines, tmp_path / "p.json", 3))
    with torch.no_grad():
        full = _token_loss_sum(model(input_ids=b["input_ids"], pixel_values=b["pixel_values"],
                                     attention_mask=b["attention_mask"]).logits, b["labels"])
        ours = TokenLoss(model)(b["input_ids"], b["labels"], b["pixel_values"], b["attention_mask"])
    assert ours.item() == pytest.approx(full.item(), rel=1e-5)


def test_packing_keeps_samples_apart(tiny, lines, tmp_path):
    """Packed rows must give the same loss as padded rows (no attention across samples)."""
    from got.trainer import TokenLoss

    model, tok = tiny
    items = encoded_lines(model, tok, lines, tmp_path / "p.json", 4)
    padded = Collator(tok.endoftext_id, 256)(items)
    packed = Collator(tok.endoftext_id, 256, pack=True)(items)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0] and packed["attention_mask"] is None
    model.eval()
    with torch.no_grad():
        losses = [TokenLoss(model)(b["input_ids"], b["labels"], b["pixel_values"], b["attention_mask"],
                                   b.get("position_ids")) for b in (padded, packed)]
    assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-4)


def test_multi_crop_query_tiles_the_image(tiny, lines):
    model, tok = tiny
    root, _ = lines
    from PIL import Image

    wide = Image.new("RGB", (1000, 300), "white")
    enc = SampleEncoder(tok, model.config.image_size, model.config.image_token_len, 4096, max_tiles=6)
    crop = enc([wide], [{"from": "human", "value": "<image>\nOCR with format upon the patch reference: "},
                        {"from": "gpt", "value": "x"}], "wide")
    plain = enc([wide], [{"from": "human", "value": "<image>\nOCR: "}, {"from": "gpt", "value": "x"}], "wide")
    assert plain.pixel_values.shape[0] == 1 and crop.pixel_values.shape[0] > 2    # tiles + thumbnail
    assert crop.input_ids.count(model.config.img_pad_id) == crop.pixel_values.shape[0] * model.config.image_token_len


def test_shards_from_got_data_render(tiny, tmp_path):
    """Shards written by `got data render --shards` read back: records, multi-page members, images."""
    from data_engines.cli import render

    render("plain,multi_page", n=6, out=tmp_path / "r", seed=1, workers=1, shards=True, shard_size=4)
    src = ShardSource(str(tmp_path / "r" / "shards" / "shard-*.tar"))
    assert len(src) == 6
    enc = encoder_for(*tiny, max_length=100_000)
    items = [src.get(i, enc) for i in range(len(src))]
    assert all(isinstance(x, Example) for x in items), [x for x in items if isinstance(x, Skip)]
    assert max(x.pixel_values.shape[0] for x in items) > 1          # a multi-page sample keeps all its pages
    # a shard member that is not an image is a counted skip, not a crash
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        for name, data in [("k.json", json.dumps({"image": "k.png", "conversations": [
                {"from": "human", "value": "<image>\nOCR: "}, {"from": "gpt", "value": "x"}]}).encode()),
                           ("k.png", b"garbage")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    skip = ShardSource(str(bad)).get(0, enc)
    assert isinstance(skip, Skip) and "bad.tar:k" in skip.origin


def test_lora_trains_adapters_and_exports_merged(tiny, tmp_path):
    """model.lora.r > 0 (peft, an extra): only adapters + projector train; the export is a plain merged model."""
    pytest.importorskip("peft")
    from got.checkpoint import load_pretrained, save_pretrained
    from got.trainer import export_model
    from stages import get_recipe

    model, tok = tiny
    save_pretrained(model, tmp_path / "base", tokenizer=tok)
    cfg = load_train_config("configs/tiny_finetune.yaml", [f"model.init_from={tmp_path / 'base'}", "model.lora.r=4"])
    lora, _ = get_recipe("finetune").build(cfg)
    apply_freeze(lora, cfg["freeze"])
    trained = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n or n.startswith("projector.") for n in trained)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)  # as if trained: the merged export must differ from the base in q/k/v/o only
    export_model(lora, tok, tmp_path / "export")
    merged, _ = load_pretrained(tmp_path / "export")
    base, new = model.state_dict(), merged.state_dict()
    assert base.keys() == new.keys()
    changed = {k for k in base if not torch.equal(base[k], new[k])}
    assert changed and all(k.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj") for k in changed)


def test_cli_overrides_may_follow_options(monkeypatch, capsys):
    """`got train --stage 1 a=1 --resume auto b=2`: both overrides reach the trainer; a stray option is an error."""
    import got.trainer as trainer
    from got.cli import main as got_main

    seen = {}
    monkeypatch.setattr(trainer, "cli_main", lambda args: seen.update(vars(args)) or 0)
    assert got_main(["train", "--stage", "1", "train.lr=1e-4", "--resume", "auto", "train.steps=5"]) == 0
    assert seen["overrides"] == ["train.lr=1e-4", "train.steps=5"] and seen["resume"] == "auto"
    with pytest.raises(SystemExit):
        got_main(["train", "--stage", "1", "--resume", "auto", "--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        got_main(["chat", "x.png", "--model", "m", "a=1"])  # only train takes KEY=VALUE


def test_a_stale_deepspeed_build_lock_is_named_not_waited_on(tmp_path, monkeypatch):
    """A start killed while DeepSpeed loads its CPU op leaves a lock every later start would wait on forever."""
    import os
    import time

    from got.trainer import _cpu_accelerator

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    lock.touch()
    _cpu_accelerator()  # a fresh lock: a build in progress, waited on as DeepSpeed does
    old = time.time() - 3600
    os.utime(lock, (old, old))
    with pytest.raises(FileExistsError, match="stale build lock"):
        _cpu_accelerator()
