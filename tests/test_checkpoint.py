"""Checkpoint directories, foreign layouts, error reporting and `got convert` on the tiny presets."""
from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from got.checkpoint import (export_hf, from_ours, load_model, load_pretrained, load_state_dict_file, save_pretrained,
                            to_ours)
from got.cli import main as got_main
from got.config import load_config
from got.modeling import GOTModel
from got.tokenizer import GOTTokenizer


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return GOTModel(load_config("tiny")).eval()


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_pretrained(tiny, d, tokenizer=GOTTokenizer.default())
    return d


def same_weights(a: GOTModel, b: GOTModel) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_load_round_trip(tiny, saved):
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "got_bpe.tiktoken", "model.safetensors",
                                                      "tokenizer_config.json"]
    raw = json.loads((saved / "config.json").read_text())
    assert raw["model_type"] == "got" and raw["tokens"]["img_pad_id"] == 16600 and raw["vision"]["window_size"] == 6
    assert "decoder.lm_head.weight" not in load_file(str(saved / "model.safetensors"))  # tied: stored once
    model, tok = load_pretrained(saved)
    assert same_weights(model, tiny) and not model.training
    assert all(p.requires_grad for p in model.parameters())  # loaded tensors became trainable parameters
    assert model.decoder.lm_head.weight is model.decoder.get_input_embeddings().weight
    assert tok.img_pad_id == model.config.img_pad_id and tok.vocab_size == 16601
    bf16, _ = load_pretrained(saved, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16


def test_sharded_save(tiny, tmp_path):
    save_pretrained(tiny, tmp_path, max_shard_bytes=4_000_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and not (tmp_path / "model.safetensors").exists()
    assert same_weights(load_model(tmp_path), tiny)
    save_pretrained(tiny, tmp_path)  # re-saving unsharded removes the stale shards
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]


def test_missing_unexpected_and_mismatched_keys_are_named(tiny, saved, tmp_path):
    sd = load_file(str(saved / "model.safetensors"))
    (tmp_path / "config.json").write_text((saved / "config.json").read_text())

    def write(d):
        save_file(d, str(tmp_path / "model.safetensors"))

    write({k: v for k, v in sd.items() if k != "vision_tower.blocks.2.attn.qkv.weight"})
    with pytest.raises(ValueError, match=r"missing: vision_tower\.blocks\.2\.attn\.qkv\.weight"):
        load_model(tmp_path)
    write({**sd, "vision_tower.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected: vision_tower\.extra\.weight"):
        load_model(tmp_path)
    write({**sd, "projector.bias": torch.zeros(7)})
    with pytest.raises(ValueError, match=r"shape mismatch: projector\.bias \(7,\) vs model \(128,\)"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read weights"):
        load_model(tmp_path)


def test_load_pretrained_names_the_missing_file(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((saved / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"tokenizer_config\.json"):
        load_pretrained(tmp_path)


class Boom:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_bin_is_read_with_weights_only(tiny, tmp_path, monkeypatch):
    """An original-layout .bin loads; a pickle carrying code is refused and nothing runs."""
    monkeypatch.chdir(tmp_path)
    sd = from_ours(tiny.state_dict(), "original")
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(16)  # older Qwen2 files carry this buffer
    torch.save(sd, tmp_path / "pytorch_model.bin")
    assert set(load_state_dict_file(tmp_path / "pytorch_model.bin")) == set(sd)
    model = load_model(tmp_path / "pytorch_model.bin", config="tiny")
    assert same_weights(model, tiny)
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"w": Boom()}, f, protocol=2)
    with pytest.raises(ValueError, match=r"evil\.bin: cannot read weights"):
        load_state_dict_file(tmp_path / "evil.bin")
    assert not (tmp_path / "PWNED").exists()


def test_untied_lm_head_in_a_checkpoint_is_kept(tiny, tmp_path):
    sd = from_ours(tiny.state_dict(), "original")
    sd["lm_head.weight"] = sd["lm_head.weight"].clone() + 1.0
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    model = load_model(tmp_path / "model.safetensors", config="tiny")
    assert model.decoder.config.tie_word_embeddings is False
    assert torch.equal(model.decoder.lm_head.weight, sd["lm_head.weight"])


def test_grid_change_resizes_position_tables(tiny, saved, tmp_path):
    """Tiny weights (256 px) into a 128 px variant: pos_embed and global rel-pos tables are resized."""
    cfg = load_config("tiny")
    cfg.vision.image_size = 128
    model = load_model(saved, config=cfg)
    assert model.vision_tower.pos_embed.shape == (1, 8, 8, 96)
    assert model.vision_tower.blocks[1].attn.rel_pos_h.shape == (15, 32)
    assert model.config.image_token_len == 4


def test_layout_renames_are_inverse(tiny):
    sd = tiny.state_dict()
    for layout in ("original", "hf", "hf_legacy"):
        assert list(to_ours(from_ours(sd, layout), layout)) == list(sd)


def test_export_refuses_what_got_ocr2_cannot_express(tiny, tmp_path):
    with pytest.raises(ValueError, match="net_3 has 256 channels, got_ocr2 needs the decoder hidden size 128"):
        export_hf(tiny, tmp_path)


def test_got_convert_cli(tiny, saved, tmp_path, capsys):
    """original layout (+ tiktoken file) -> ours -> hf (via a preset whose net_3 matches the decoder width)."""
    src = tmp_path / "orig"
    src.mkdir()
    original = {k: v.clone() for k, v in from_ours(tiny.state_dict(), "original").items()}  # lm_head: a tied copy
    save_file(original, str(src / "model.safetensors"))
    GOTTokenizer.default().save(src)
    assert got_main(["convert", "--from", str(src), "--to", str(tmp_path / "ours"), "--format", "got",
                     "--config", "tiny", "--dtype", "bfloat16"]) == 0
    assert "tokenizer copied" in capsys.readouterr().out
    model, tok = load_pretrained(tmp_path / "ours")
    assert model.dtype == torch.bfloat16 and tok.vocab_size == 16601
    assert got_main(["convert", "--from", str(saved), "--to", str(tmp_path / "hf"), "--format", "hf"]) == 1
    assert "net_3 has 256 channels" in capsys.readouterr().err
    assert got_main(["convert", "--from", str(tmp_path / "nope"), "--to", str(tmp_path / "x")]) == 1
    assert "no such checkpoint" in capsys.readouterr().err


def test_export_to_transformers_with_tokenizer_and_image_processor(tmp_path):
    """A got_ocr2-expressible tiny model (net_3 = decoder width) goes to transformers with a working tokenizer."""
    from transformers import AutoImageProcessor, AutoTokenizer, GotOcr2ForConditionalGeneration

    cfg = load_config("tiny")
    cfg.vision.out_channels = 128
    torch.manual_seed(0)
    model = GOTModel(cfg).eval()
    tok = GOTTokenizer.default()
    export_hf(model, tmp_path, tokenizer=tok)
    hf_tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "<|im_start|>user\n<img><imgpad></img>\nOCR: 第1页 Hello, world 12345<|im_end|>"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert hf_tok.eos_token_id == tok.endoftext_id == hf_tok.pad_token_id
    assert AutoImageProcessor.from_pretrained(tmp_path).size["height"] == 256
    assert GOTTokenizer.from_dir(tmp_path).vocab_size == tok.vocab_size  # our loader still reads the directory
    hf = GotOcr2ForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids = torch.tensor([tok.encode("<|im_start|>user\n<img>" + "<imgpad>" * 16 + "</img>\nOCR: ")])
    pixels = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=ids, pixel_values=pixels).logits, model(ids, pixels).logits, atol=1e-4)
