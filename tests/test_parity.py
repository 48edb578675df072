"""Parity with transformers' GotOcr2ForConditionalGeneration: the proof that GOTModel IS the GOT architecture.

A small random got_ocr2 model (complete text_config; every weight randomised, rel-pos tables and pos_embed
included, so the relative-position path really matters) is written in each layout we import, loaded here and
compared: logits within 1e-4 in fp32, 32 greedy tokens identical. The vision grid is 8x8 with window 3 (padded
to 9), one global block; 2 tiles in one sample; a left-padded batch with 1 and 2 tiles.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from got.checkpoint import export_hf, from_ours, load_model, load_state_dict_file, save_pretrained, to_ours
from got.config import load_config
from got.modeling import GOTModel

transformers = pytest.importorskip("transformers")
from transformers import GotOcr2Config, GotOcr2ForConditionalGeneration  # noqa: E402

IMG_PAD = 299  # specials follow the released order: <|endoftext|> = IMG_PAD - 216
EOT, IM_START, IM_END, IMG, IMG_END = 83, 84, 85, 297, 298
TOKENS = 4  # 128 px / 16 = 8x8 grid -> 4x4 -> 2x2 tokens per tile

TEXT = dict(model_type="qwen2", vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=512,
            rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True, use_sliding_window=False,
            attention_dropout=0.0, initializer_range=0.02, bos_token_id=EOT, eos_token_id=EOT, pad_token_id=EOT)
VISION = dict(hidden_size=32, output_channels=16, num_hidden_layers=3, num_attention_heads=2, image_size=128,
              patch_size=16, window_size=3, global_attn_indexes=[1], mlp_dim=64)


def prompt(tiles: int, text: list[int]) -> list[int]:
    return [IM_START, 5, 6, IMG] + [IMG_PAD] * TOKENS * tiles + [IMG_END] + text


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    cfg = GotOcr2Config(vision_config=VISION, text_config=TEXT, image_token_index=IMG_PAD, image_seq_length=TOKENS)
    model = GotOcr2ForConditionalGeneration(cfg).eval()
    assert model.config.text_config.num_hidden_layers == 2 and model.config.text_config.vocab_size == 300
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn_like(p) * (0.02 if "embed_tokens" in name else 0.1)
            p.copy_(noise + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return model


@pytest.fixture(scope="module")
def layouts(hf_model, tmp_path_factory):
    """Directories holding the same weights as transformers saves them, in its current layout, and as GOT released."""
    root = tmp_path_factory.mktemp("parity")
    hf_model.save_pretrained(root / "saved")
    saved = load_state_dict_file(root / "saved")
    ours = to_ours(saved)
    hf_config = json.loads((root / "saved" / "config.json").read_text())
    dirs = {"saved": root / "saved"}
    for layout in ("hf", "hf_legacy", "original"):
        d = root / layout
        d.mkdir()
        save_file({k: v.contiguous() for k, v in from_ours(ours, layout).items()}, str(d / "model.safetensors"))
        if layout == "original":  # the released GOT config.json: Qwen2 fields at top level + GOT's image tokens
            raw = {**TEXT, "model_type": "GOT", "architectures": ["GOTQwenForCausalLM"], "im_patch_token": IMG_PAD,
                   "im_start_token": IMG, "im_end_token": IMG_END, "image_token_len": TOKENS, "use_im_start_end": True}
        else:
            raw = hf_config
        (d / "config.json").write_text(json.dumps(raw))
        dirs[layout] = d
    return dirs


def test_layouts_are_what_we_claim(layouts):
    keys = {name: list(load_state_dict_file(d)) for name, d in layouts.items()}
    assert any(k.startswith("model.vision_tower_high.blocks.1.attn.rel_pos_h") for k in keys["original"])
    assert "model.mm_projector_vary.weight" in keys["original"]
    assert "model.multi_modal_projector.conv_upsampler2.weight" in keys["hf"]
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in keys["hf"]
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in keys["hf_legacy"]
    assert len(keys["hf"]) == len(keys["original"]) == len(keys["saved"])


@pytest.mark.parametrize("layout", ["saved", "hf", "hf_legacy", "original"])
def test_import_matches_transformers(hf_model, layouts, layout):
    model = load_model(layouts[layout])
    cfg = model.config
    assert (cfg.img_pad_id, cfg.endoftext_id, cfg.im_end_id, cfg.img_start_id) == (IMG_PAD, EOT, IM_END, IMG)
    assert cfg.vision.window_size == 3 and cfg.vision.global_attn_indexes == (1,) and cfg.image_token_len == TOKENS
    torch.manual_seed(1)
    ids = torch.tensor([prompt(2, [7, 8, 9, 10])])
    pixels = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        want = hf_model(input_ids=ids, pixel_values=pixels).logits
        got = model(ids, pixels).logits
    assert want.abs().max() > 0.1  # not a degenerate comparison
    assert (want - got).abs().max().item() <= 1e-4

    kw = dict(max_new_tokens=32, min_new_tokens=32, do_sample=False, eos_token_id=IM_END, pad_token_id=EOT)
    want_ids = hf_model.generate(input_ids=ids, pixel_values=pixels, **kw)[:, ids.shape[1]:]
    got_ids = model.generate(ids, pixels, **kw)
    assert got_ids.shape == (1, 32)
    assert torch.equal(want_ids, got_ids)
    assert len(set(got_ids[0].tolist())) > 3  # the sequence is not one repeated token


def test_left_padded_mixed_tiles_generate_like_transformers(hf_model, layouts):
    model = load_model(layouts["hf"])
    torch.manual_seed(2)
    a, b = prompt(1, [7, 8, 9, 10, 11, 12]), prompt(2, [9])
    width = max(len(a), len(b))
    ids = torch.tensor([[EOT] * (width - len(s)) + s for s in (a, b)])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in (a, b)])
    pixels = torch.randn(3, 3, 128, 128)  # sample 0: tile 0; sample 1: tiles 1, 2
    kw = dict(max_new_tokens=32, min_new_tokens=32, do_sample=False, eos_token_id=IM_END, pad_token_id=EOT)
    want = hf_model.generate(input_ids=ids, pixel_values=pixels, attention_mask=mask, **kw)[:, width:]
    got = model.generate(ids, pixels, attention_mask=mask, **kw)
    assert torch.equal(want, got)
    alone = model.generate(torch.tensor([b]), pixels[1:], **kw)  # padding does not change the answer
    assert torch.equal(alone[0], got[1])


def test_round_trip_through_export(layouts, tmp_path):
    """our save -> our load -> export got_ocr2 -> transformers loads it -> same logits."""
    model = load_model(layouts["original"])
    save_pretrained(model, tmp_path / "ours")
    again = load_model(tmp_path / "ours")
    export_hf(again, tmp_path / "export")
    hf = GotOcr2ForConditionalGeneration.from_pretrained(tmp_path / "export").eval()
    torch.manual_seed(3)
    ids = torch.tensor([prompt(1, [7, 8, 9])])
    pixels = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        want = model(ids, pixels).logits
        assert (again(ids, pixels).logits - want).abs().max().item() == 0
        assert (hf(input_ids=ids, pixel_values=pixels).logits - want).abs().max().item() <= 1e-4


def test_base_preset_matches_transformers_shapes_on_meta():
    """The base preset is the released architecture: 560,528,640 unique parameters and the same tensors."""
    with torch.device("meta"):
        ours = GOTModel(load_config("base"))
        theirs = GotOcr2ForConditionalGeneration(GotOcr2Config())
    assert ours.num_parameters() == 560_528_640
    assert sum(p.numel() for p in theirs.parameters()) == 560_528_640
    assert ours.num_parameters("vision_tower") == 95_569_152 and ours.num_parameters("projector") == 1_049_600
    mine = {k: tuple(v.shape) for k, v in from_ours(ours.state_dict(), "hf").items()}
    want = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert mine == want
    assert len(want) == 472
