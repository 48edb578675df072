"""GOTModel behaviour on the tiny presets: configs, merging image features, batching, training signals."""
from __future__ import annotations

import pytest
import torch

from got.config import GOTConfig, VisionConfig, list_presets, load_config
from got.modeling import GOTModel
from got.vision_tower import Attention, VisionTower, get_rel_pos


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = GOTModel(load_config("tiny")).eval()
    with torch.no_grad():  # non-zero position tables so the rel-pos / pos_embed paths matter
        for name, p in model.vision_tower.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0, 0.5)
    return model


def prompt(cfg: GOTConfig, tiles: int, text: list[int]) -> list[int]:
    return [cfg.im_start_id, 5, 6, cfg.img_start_id] + [cfg.img_pad_id] * cfg.image_token_len * tiles + [cfg.img_end_id] + text


def left_pad(cfg: GOTConfig, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[cfg.endoftext_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


# ---- configs ---------------------------------------------------------------------------------------------------
def test_presets_hold_the_agreed_facts():
    assert set(list_presets()) >= {"base", "stage1", "tiny", "tiny_stage1"}
    base, stage1, tiny, tiny1 = (load_config(n) for n in ("base", "stage1", "tiny", "tiny_stage1"))
    assert base.image_token_len == stage1.image_token_len == 256 and base.image_size == 1024
    assert (base.endoftext_id, base.im_start_id, base.im_end_id, base.img_start_id, base.img_end_id, base.img_pad_id) == (
        151643, 151644, 151645, 151857, 151858, 151859)
    assert base.decoder["vocab_size"] == stage1.decoder["vocab_size"] == 151860
    assert stage1.decoder_type == "opt" and stage1.decoder["max_position_embeddings"] == 4096
    assert tiny.image_token_len == 16 and tiny.vision.grid_size == 16 and tiny.vision.window_size == 6
    assert (tiny.endoftext_id, tiny.img_pad_id, tiny.vocab_size) == (16384, 16600, 16601)
    assert tiny1.decoder_type == "opt" and tiny1.img_pad_id == 16600
    again = GOTConfig.from_dict(tiny.to_dict())
    assert again.to_dict() == tiny.to_dict()


def test_stage1_and_base_shapes_on_meta():
    with torch.device("meta"):
        stage1 = GOTModel(load_config("stage1"))
    assert stage1.projector.weight.shape == (768, 1024)
    assert stage1.decoder.model.decoder.embed_positions.weight.shape[0] == 4096 + 2  # OPT's offset of 2
    assert stage1.decoder.lm_head.weight is stage1.decoder.get_input_embeddings().weight


def test_bad_configs_fail_with_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="presets: .*tiny"):
        load_config("no_such_preset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nvision: {image_size: 256, wndow_size: 6}\ndecoder: {model_type: qwen2, vocab_size: 10}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown vision config keys \['wndow_size'\]"):
        load_config(bad)
    bad.write_text("name: x\ndecoder: {model_type: qwen2, vocab_size: 100}\n")  # default ids do not fit vocab 100
    with pytest.raises(ValueError, match="do not fit decoder vocab_size 100"):
        load_config(bad)


# ---- vision tower --------------------------------------------------------------------------------------------
def eager_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """SAM's reference formulation: softmax(q k^T * scale + rel_h + rel_w) v, all explicit."""
    B, H, W, C = x.shape
    nh = attn.num_heads
    q, k, v = attn.qkv(x).reshape(B, H * W, 3, nh, -1).permute(2, 0, 3, 1, 4).reshape(3, B * nh, H * W, -1).unbind(0)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    Rh, Rw = get_rel_pos(H, H, attn.rel_pos_h), get_rel_pos(W, W, attn.rel_pos_w)
    r_q = q.reshape(B * nh, H, W, -1)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)
    scores = (scores.view(B * nh, H, W, H, W) + rel_h[..., None] + rel_w[..., None, :]).view(B * nh, H * W, H * W)
    out = (scores.softmax(-1) @ v).view(B, nh, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, C)
    return attn.proj(out)


@pytest.mark.parametrize("hw", [(6, 6), (6, 5)])
def test_both_attention_paths_equal_eager_reference(monkeypatch, hw):
    """Training (autograd on) runs SDPA with the bias as mask; CPU inference runs cache-sized GEMM blocks.
    Both equal the explicit formulation, however they are chunked (blocks that split image rows and heads,
    last block short), on square and non-square grids."""
    import got.vision_tower as vt

    torch.manual_seed(0)
    attn = Attention(dim=32, num_heads=4, input_size=6)
    with torch.no_grad():
        attn.rel_pos_h.normal_(0, 1.0)
        attn.rel_pos_w.normal_(0, 1.0)
    x = torch.randn(3, *hw, 32)
    with torch.no_grad():
        want = eager_attention(attn, x)
    N = hw[0] * hw[1]
    for mask_bytes, block in [(vt.MASK_CHUNK_BYTES, vt.CPU_BLOCK_ELEMENTS), (1, 1), (1, 4 * hw[1] * N), (1, 5 * hw[0] * hw[1] * N)]:
        monkeypatch.setattr(vt, "MASK_CHUNK_BYTES", mask_bytes)  # 1: one (tile, head) per SDPA call
        monkeypatch.setattr(vt, "CPU_BLOCK_ELEMENTS", block)  # 1: one head and one image row per block
        trained = attn(x)
        assert trained.requires_grad
        with torch.no_grad():
            inferred = attn(x)
        assert torch.allclose(trained, want, atol=1e-5), (mask_bytes, block)
        assert torch.allclose(inferred, want, atol=1e-5), (mask_bytes, block)


def test_bf16_inference_blocks_match_fp32_reference():
    torch.manual_seed(0)
    attn = Attention(dim=64, num_heads=2, input_size=32)
    with torch.no_grad():
        attn.rel_pos_h.normal_(0, 1.0)
        attn.rel_pos_w.normal_(0, 1.0)
    x = torch.randn(1, 32, 32, 64)
    with torch.no_grad():
        want = eager_attention(attn, x)
        attn.to(torch.bfloat16)
        got = attn(x.to(torch.bfloat16)).float()
        eager_bf16 = eager_attention(attn, x.to(torch.bfloat16)).float()
    # bf16 rounding only: about the error of the explicit formulation run in bf16 (measured 0.0026 vs 0.0023)
    assert (got - want).abs().mean() < 1.5 * (eager_bf16 - want).abs().mean()
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_a_line_crop_reads_the_same_alone_or_in_a_batch():
    """CPU bf16 inference: a page's line crops go through the tower together (vt.CPU_CHUNK_BYTES), a single line
    alone; each crop's features must not depend on which others share its pass (one row of windows once made a
    strided layout that rounded differently alone)."""
    torch.manual_seed(0)
    cfg = VisionConfig(image_size=[32, 1024], patch_size=8, embed_dim=160, depth=2, num_heads=5, mlp_dim=640,
                       window_size=4, global_attn_indexes=[1], neck_channels=32, net2_channels=64, out_channels=64,
                       neck_stride=[2, 1])
    tower = VisionTower(cfg).to(torch.bfloat16).eval()
    pixels = torch.randn(7, 3, 32, 1024, dtype=torch.bfloat16)
    with torch.inference_mode():
        batch = tower(pixels)  # 160 KB of activations per crop: passes of 4, 2 and 1 (powers of two)
        assert all(torch.equal(tower(pixels[i:i + 1])[0], batch[i]) for i in range(len(pixels)))


def test_a_line_is_read_at_its_content_width_on_a_crop_of_the_trained_grid():
    """A line preset reads a crop at its content width (ctc_read): the narrower grid takes the left columns of
    pos_embed and the middle rows of the rel-pos tables, the same positions and offsets as at full width (not
    resized), and crops are grouped by their rounded width."""
    import got.vision_tower as vt

    torch.manual_seed(0)
    cfg = VisionConfig(image_size=[32, 1024], patch_size=8, embed_dim=40, depth=2, num_heads=2, mlp_dim=80,
                       window_size=4, global_attn_indexes=[1], neck_channels=16, net2_channels=32, out_channels=32,
                       neck_stride=[2, 1], ctc_charset="abc ")
    tower = VisionTower(cfg).eval()
    with torch.no_grad():
        for name, p in tower.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0, 0.5)
    assert torch.equal(tower._pos_embed(4, 48), tower.pos_embed[:, :, :48])
    table = tower.blocks[1].attn.rel_pos_w  # global: trained for 128 token columns
    assert torch.equal(get_rel_pos(48, 48, table, crop=True), get_rel_pos(128, 128, table)[:48, :48])
    assert not torch.equal(get_rel_pos(48, 48, table), get_rel_pos(128, 128, table)[:48, :48])  # SAM resizes
    pixels = torch.full((3, 3, 32, 1024), 0.7)
    for crop, ink in enumerate((300, 10, 1000)):  # content ends at px 300, 10, 1000 -> read 384, 128, 1024 wide
        pixels[crop, :, 8:24, :ink] = torch.rand(3, 16, ink)
    with torch.inference_mode():
        reads = tower.ctc_read(pixels)
        want = [tower.ctc_decode(tower(pixels[i:i + 1, ..., :w]))[0] for i, w in enumerate((384, 128, 1024))]
    assert reads == want and reads[0] != tower.ctc_decode(tower(pixels[:1]))[0]


def test_vision_tower_shapes_and_other_sizes(tiny):
    vt = tiny.vision_tower
    with torch.no_grad():
        assert vt(torch.randn(2, 3, 256, 256)).shape == (2, 16, 256)
        # another grid: pos_embed is resized bicubically, rel-pos tables linearly (8x8 grid -> 2x2 tokens)
        assert vt(torch.randn(1, 3, 128, 128)).shape == (1, 4, 256)
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        vt(torch.randn(1, 3, 250, 250))
    with pytest.raises(ValueError, match=r"must be \(N, 3, S, S\)"):
        vt(torch.randn(3, 256, 256))


def test_vision_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    vt = VisionTower(load_config("tiny").vision).train()
    x = torch.randn(1, 3, 128, 128)  # 8x8 grid: still padded to 12 for window 6, 4x cheaper than 256 px
    vt(x).square().mean().backward()
    plain = [p.grad.clone() for p in vt.parameters()]
    vt.zero_grad()
    vt.gradient_checkpointing = True
    vt(x).square().mean().backward()
    for a, p in zip(plain, vt.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


# ---- merging and batching --------------------------------------------------------------------------------------
def test_image_features_land_on_imgpad_positions_in_order(tiny):
    cfg = tiny.config
    ids = torch.tensor([prompt(cfg, 2, [7, 8])])
    pixels = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        feats = tiny.encode_images(pixels)
        merged = tiny.merge_image_features(ids, tiny.decoder.get_input_embeddings()(ids), feats)
    pad = (ids[0] == cfg.img_pad_id).nonzero().squeeze(1)
    assert torch.equal(merged[0, pad], feats.reshape(-1, feats.shape[-1]))
    others = (ids[0] != cfg.img_pad_id).nonzero().squeeze(1)
    assert torch.equal(merged[0, others], tiny.decoder.get_input_embeddings()(ids)[0, others])


def test_imgpad_count_mismatch_is_a_clear_error(tiny):
    cfg = tiny.config
    ids = torch.tensor([prompt(cfg, 1, [7])])
    with pytest.raises(ValueError, match=r"16 <imgpad> tokens but the images give 32 feature rows \(2 tiles x 16"):
        tiny(ids, torch.randn(2, 3, 256, 256))
    with pytest.raises(ValueError, match="16 <imgpad> tokens but the images give 0 feature rows"):
        tiny(ids)


@pytest.mark.parametrize("preset", ["tiny", "tiny_stage1"])
def test_left_padded_mixed_tile_batch_equals_single_samples(preset, tiny):
    torch.manual_seed(0)
    model = tiny if preset == "tiny" else GOTModel(load_config(preset)).eval()
    cfg = model.config
    rows = [prompt(cfg, 1, [7, 8, 9, 10, 11]), prompt(cfg, 2, [12])]
    tiles = [1, 2]
    pixels = torch.randn(sum(tiles), 3, 256, 256)
    chunks = pixels.split(tiles)
    ids, mask = left_pad(cfg, rows)
    with torch.no_grad():
        batch = model(ids, pixels, attention_mask=mask).logits[:, -1]
        for i, (row, px) in enumerate(zip(rows, chunks)):
            single = model(torch.tensor([row]), px).logits[0, -1]
            assert torch.allclose(batch[i], single, atol=1e-4), (preset, i)
    new = model.generate(ids, pixels, attention_mask=mask, max_new_tokens=4, min_new_tokens=4)
    assert new.shape == (2, 4)  # only the NEW tokens come back
    for i, (row, px) in enumerate(zip(rows, chunks)):
        assert torch.equal(new[i], model.generate(torch.tensor([row]), px, max_new_tokens=4, min_new_tokens=4)[0])


def test_generate_stops_at_im_end(tiny):
    cfg = tiny.config
    ids = torch.tensor([prompt(cfg, 1, [7])])
    pixels = torch.randn(1, 3, 256, 256)
    first = tiny.generate(ids, pixels, max_new_tokens=1)[0, 0].item()
    out = tiny.generate(ids, pixels, max_new_tokens=5, eos_token_id=first)
    assert out.tolist() == [[first]]


# ---- training signals ----------------------------------------------------------------------------------------------
def test_loss_ignores_masked_labels_and_trains_every_part(tiny):
    torch.manual_seed(0)
    model = GOTModel(load_config("tiny")).train()
    cfg = model.config
    ids = torch.tensor([prompt(cfg, 1, [7, 8, 9, cfg.im_end_id])])
    labels = ids.clone()
    labels[0, :-4] = -100  # only the answer is supervised
    out = model(ids, torch.randn(1, 3, 256, 256), labels=labels)
    logits = out.logits[0, -5:-1]
    want = torch.nn.functional.cross_entropy(logits, ids[0, -4:])
    assert torch.allclose(out.loss, want, atol=1e-5)
    out.loss.backward()
    for part in ("vision_tower", "projector", "decoder"):
        grads = [p.grad for p in getattr(model, part).parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), part
    assert model.vision_tower.patch_embed.proj.weight.grad.abs().sum() > 0  # the encoder is NOT frozen by accident


def test_bf16_forward_runs(tiny):
    model = GOTModel(load_config("tiny")).eval().to(torch.bfloat16)
    cfg = model.config
    with torch.no_grad():
        out = model(torch.tensor([prompt(cfg, 1, [7])]), torch.randn(1, 3, 256, 256))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()
    assert model.decoder.model.rotary_emb.inv_freq.dtype == torch.float32  # rope phases not rounded to bf16
