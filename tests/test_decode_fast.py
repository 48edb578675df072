"""The fast CPU decode path: the compilable ChunkedKVCache and weight-only int8 / int4 (got.quantize).

Greedy tokens of the compiled one-token step must be the eager path's, tiny preset in bf16, 64 tokens, several
prompts, batch 1 and batch 4, with the cache growing during decoding. The suite compiles with dynamo's
`aot_eager` backend (the same graph capture, guards and functionalisation as inductor, seconds instead of a
minute of C++ builds); GOT_TEST_INDUCTOR=1 runs the same check through inductor itself.
"""
import os

import pytest
import torch

from got.config import load_config
from got.decode import CACHE, ChunkedKVCache, ChunkedKVLayer, compile_config, use_decode_attention
from got.modeling import GOTModel
from got.quantize import WeightOnlyLinear, quantize_weights

NEW = 64


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GOTModel(load_config("tiny")).eval()
    with torch.no_grad():  # std 0.1: varied tokens (the default init answers one token to everything)
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1)
    m = m.to(torch.bfloat16)
    use_decode_attention(m.decoder)
    return m


def prompts(model, n: int):
    """n left-padded GOT-shaped prompts of different lengths, with one image tile each."""
    cfg, rng = model.config, torch.Generator().manual_seed(1)
    rows = [[cfg.im_start_id, *range(100, 104 + 3 * i), cfg.img_start_id, *[cfg.img_pad_id] * cfg.image_token_len,
             cfg.img_end_id, 300 + i, cfg.im_end_id, cfg.im_start_id] for i in range(n)]
    width = max(map(len, rows))
    ids = torch.full((n, width), cfg.endoftext_id)
    mask = torch.zeros((n, width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r):], mask[b, width - len(r):] = torch.tensor(r), 1
    return ids, mask, torch.randn(n, 3, cfg.image_size, cfg.image_size, generator=rng)


def generate(model, ids, mask, pixels, **kw):
    with torch.inference_mode():
        return model.generate(ids, pixels, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW,
                              **{CACHE: ChunkedKVCache()}, **kw).tolist()


@pytest.mark.parametrize("backend", ["aot_eager"] + (["inductor"] if os.environ.get("GOT_TEST_INDUCTOR") else []))
def test_compiled_step_gives_the_eager_tokens(model, monkeypatch, backend):
    """Batch 4 (left-padded) and each prompt alone: compiled == eager, token for token, while the cache grows
    twice (CHUNK 32, prompts of ~30 tokens, 64 new) and without a recompile per token."""
    import torch._dynamo

    monkeypatch.setattr(ChunkedKVLayer, "CHUNK", 32)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    ids, mask, pixels = prompts(model, 4)
    runs = [(ids, mask, pixels)] + [(ids[b:b + 1, -int(mask[b].sum()):], mask[b:b + 1, -int(mask[b].sum()):],
                                     pixels[b:b + 1]) for b in range(4)]
    for i, (x, m, px) in enumerate(runs):
        eager = generate(model, x, m, px)
        assert len(set(eager[0])) > 5  # varied text, so a wrong step would show
        assert generate(model, x, m, px, compile_config=compile_config(backend)) == eager, f"run {i}"
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert 0 < frames <= 12, frames  # a few per capacity / batch shape, never one per token


def test_the_compiled_step_reads_weights_changed_in_place(model):
    """The compiled step skips guards on the decoder's modules (compile_config), so this is what still holds: a
    weight changed in place after the compile is read by the next compiled step, as eager reads it."""
    import copy

    import torch._dynamo

    torch._dynamo.reset()
    m = copy.deepcopy(model)
    m.decoder.__dict__.pop("_compiled_call", None)  # a copy would otherwise call the original's compiled step
    ids, mask, pixels = prompts(m, 2)
    before = generate(m, ids, mask, pixels, compile_config=compile_config("aot_eager"))
    with torch.no_grad():
        m.decoder.model.layers[0].mlp.down_proj.weight.mul_(-3)
    after = generate(m, ids, mask, pixels, compile_config=compile_config("aot_eager"))
    assert after != before and after == generate(m, ids, mask, pixels)


def test_cache_grows_between_steps_only(model, monkeypatch):
    """Buffers grow in CHUNK steps before a one-token step (mask and buffer the same length), never inside it."""
    monkeypatch.setattr(ChunkedKVLayer, "CHUNK", 16)
    ids, mask, pixels = prompts(model, 2)
    cache = ChunkedKVCache()
    with torch.inference_mode():
        model.generate(ids, pixels, attention_mask=mask, max_new_tokens=20, min_new_tokens=20, **{CACHE: cache})
    layer = cache.layers[0]
    n = ids.shape[1] + 19  # the last token is generated, not fed back
    assert layer.length == n and layer.capacity() == -(-n // 16) * 16
    assert cache.get_mask_sizes(1, 0)[0] == layer.keys.shape[-2]


@pytest.mark.parametrize("bits", [8, 4])
def test_weight_only_linear_matches_its_dequantised_weight(bits):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    q = WeightOnlyLinear(lin, bits=bits)
    x = torch.randn(2, 3, 64)
    want = lin(x)
    err = (q(x) - want).abs().max() / want.abs().max()
    assert q(x).shape == want.shape and err < (0.02 if bits == 8 else 0.15), err
    assert q(x.bfloat16()).dtype == torch.bfloat16


def test_quantised_decoder_generates(model):
    """All of the tiny decoder's Linear layers (lm_head too) swapped, and it still generates (its quality on a
    trained model: docs/benchmarks.md)."""
    import copy

    ids, mask, pixels = prompts(model, 2)
    q = copy.deepcopy(model)
    n = quantize_weights(q.decoder, bits=8)
    assert n == sum(isinstance(m, WeightOnlyLinear) for m in q.decoder.modules()) > 0
    assert not any(type(m) is torch.nn.Linear for m in q.decoder.modules())
    out = generate(q, ids, mask, pixels)
    assert len(out) == 2 and len(out[0]) == NEW


def test_int4_pads_rows_and_falls_back_to_int8_where_it_cannot_group():
    """Rows not a multiple of 16 (a vocabulary of 151,860 or 16,601) are padded for the int4 packing and cut off
    again; input columns not a multiple of the group size get int8, not an error."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 50), torch.nn.Linear(50, 7))
    assert quantize_weights(m, bits=4) == 3
    assert [layer.bits for layer in m] == [4, 4, 8]
    x = torch.randn(3, 64)
    assert m(x).shape == (3, 7)
    rows = torch.randn(4, 5, 64)[:, -1:]  # the last position of each row, as generate's logits_to_keep slices it
    assert not rows.reshape(-1, 64).is_contiguous() and m(rows).shape == (4, 1, 7)
    head = torch.nn.Linear(32, 50)
    padded = torch.nn.Linear(32, 64)
    with torch.no_grad():
        padded.weight.copy_(torch.cat([head.weight, torch.zeros(14, 32)]))
        padded.bias.copy_(torch.cat([head.bias, torch.zeros(14)]))
    x = torch.randn(3, 32)
    q = WeightOnlyLinear(head, 4)
    assert torch.equal(q(x), WeightOnlyLinear(padded, 4)(x)[:, :50])
    assert (q(x) - head(x)).abs().max() < 0.25  # int4 in groups of 32 (outputs of order 1): near the float layer


def test_packed_linear_equals_linear_and_keeps_the_state_dict():
    """bf16 inference products on oneDNN's packed weight give nn.Linear's exact result at every batch shape, also
    compiled and after the weight changes in place; fp32 and training take nn.Linear's own path; parameters and
    state_dict keys do not change."""
    from got.decode import PackedLinear

    torch.manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32):
        for bias in (True, False):
            ref = torch.nn.Linear(96, 160, bias=bias).to(dtype)
            fast = torch.nn.Linear(96, 160, bias=bias).to(dtype)
            fast.load_state_dict(ref.state_dict())
            fast.__class__ = PackedLinear
            assert list(fast.state_dict()) == list(ref.state_dict())
            with torch.no_grad():
                for shape in ((1, 1, 96), (96,), (4, 96), (2, 3, 96)):
                    x = torch.randn(shape).to(dtype)
                    assert torch.equal(fast(x), ref(x)), (dtype, bias, shape)
                ref.weight.mul_(0.5)  # an in-place change (as load_state_dict makes) re-packs
                fast.load_state_dict(ref.state_dict())
                x = torch.randn(2, 96).to(dtype)
                assert torch.equal(fast(x), ref(x)), (dtype, bias, "after load_state_dict")
            x = torch.randn(1, 96, dtype=dtype, requires_grad=True)
            fast(x).sum().backward()  # training: nn.Linear's path, gradients flow
            assert x.grad is not None
    fast, ref = fast.to(torch.bfloat16), ref.to(torch.bfloat16)
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True)  # the product is one opaque op there
    with torch.no_grad():
        x = torch.randn(1, 1, 96, dtype=torch.bfloat16)
        fast(x)  # the eager pass (the prompt, in generate) makes the packed copy the compiled step uses
        assert torch.equal(compiled(x), ref(x))
    import copy

    assert torch.equal(copy.deepcopy(fast)(x), ref(x))  # copies leave oneDNN's packed tensor behind


def test_a_sole_packed_layer_keeps_only_the_packed_copy_and_loses_nothing():
    """A layer that owns its weight drops the plain copy once packed; every way of reading the weight (attribute,
    state_dict, a copy, a cast, training, load_state_dict) gets the exact numbers back."""
    import copy

    from got.decode import PackedLinear

    torch.manual_seed(0)
    ref = torch.nn.Linear(96, 160).to(torch.bfloat16)
    x = torch.randn(2, 96, dtype=torch.bfloat16)

    def fresh() -> PackedLinear:
        m = torch.nn.Linear(96, 160).to(torch.bfloat16)
        m.load_state_dict(ref.state_dict())
        m.__class__, m.sole = PackedLinear, True
        with torch.no_grad():
            assert torch.equal(m(x), ref(x))
        assert m.released and [n for n, _ in m.named_parameters()] == ["bias"]
        return m

    m = fresh()
    assert list(m.state_dict()) == ["weight", "bias"] and m.released  # written out without rebuilding
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values()))
    assert torch.equal(copy.deepcopy(m).weight, ref.weight) and m.released
    assert torch.equal(m.weight, ref.weight) and not m.released  # asked for: rebuilt, and a parameter again
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]
    with torch.no_grad():
        assert torch.equal(m(x), ref(x))
    m = fresh()
    assert torch.equal(m.float()(x.float()), ref.float()(x.float()))  # a cast rebuilds first
    ref = ref.to(torch.bfloat16)
    m = fresh()
    held = m._plain  # the object an optimizer built before the release would hold
    x.requires_grad_(True)
    m(x).sum().backward()  # training: the plain weight is back, with its gradient
    assert m.weight.grad is not None and not m.released and m.weight is held
    x = x.detach()
    m = fresh()
    with torch.no_grad():
        ref.weight.mul_(-1)
    m.load_state_dict(ref.state_dict())  # loads into the rebuilt weight, packs again on the next call
    with torch.no_grad():
        assert torch.equal(m(x), ref(x)) and m.released


def test_the_tied_head_keeps_its_plain_weight(monkeypatch):
    """use_decode_attention releases only weights no other module shares: the tied lm_head is the embedding."""
    from got.config import load_config
    from got.decode import PackedLinear, use_decode_attention
    from got.modeling import GOTModel

    monkeypatch.setattr(PackedLinear, "MIN_WEIGHTS", 1)
    model = GOTModel(load_config("tiny")).to(torch.bfloat16).eval()
    use_decode_attention(model.decoder)
    head = model.decoder.get_output_embeddings()
    assert type(head) is PackedLinear and not head.sole
    assert head.weight is model.decoder.get_input_embeddings().weight
    layers = [m for m in model.decoder.modules() if type(m) is PackedLinear and m is not head]
    assert layers and all(m.sole for m in layers)


def test_page_out_loses_nothing(tmp_path):
    """page_out is a hint: a tensor mapped from a safetensors file, and an anonymous one, read the same after it."""
    from safetensors.torch import load_file, save_file

    from got.decode import page_out

    torch.manual_seed(0)
    want = {"w": torch.randn(1024, 1024).to(torch.bfloat16), "small": torch.randn(3)}
    save_file(want, str(tmp_path / "m.safetensors"))
    mapped = load_file(str(tmp_path / "m.safetensors"))
    anonymous = {k: v.clone() for k, v in want.items()}
    for tensors in (mapped, anonymous):
        for t in tensors.values():
            page_out(t)
            page_out(t[1:])  # unaligned views: only whole pages inside are touched
        assert all(torch.equal(tensors[k], want[k]) for k in want)


def _attention_in_fp64(q, key, value, mask, scale):
    scores = torch.matmul(q.double(), key.double().transpose(2, 3)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.double()
    return torch.matmul(torch.softmax(scores, -1).nan_to_num(0.0), value.double())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_cpu_attention_kernel_is_attention(dtype):
    """got_cpu::decode_attend against attention in fp64: grouped-query heads, a batch with its own masks (bool and
    additive), keys and values as views of a larger cache buffer, a row that may attend to nothing (zeros); its
    error is the final rounding's, at most that of the torch-ops form it replaces."""
    from got.decode import _attend
    from got.kernels import cpu_kernels

    if not cpu_kernels():
        pytest.skip("no CPU kernels on this machine (no compiler or no AVX-512): decoding uses torch ops")
    g = torch.Generator().manual_seed(0)
    for B, kv_heads, group, length, D in [(1, 16, 1, 300, 64), (4, 2, 2, 77, 64), (2, 2, 3, 5, 32), (3, 1, 4, 17, 16)]:
        key = torch.randn(B, kv_heads, length + 40, D, generator=g).to(dtype)[:, :, :length]  # a cache buffer's rows
        value = torch.randn(B, kv_heads, length + 40, D, generator=g).to(dtype)[:, :, :length]
        q = torch.randn(B, kv_heads, group, D, generator=g).to(dtype)
        keep = torch.ones(B, 1, 1, length + 3, dtype=torch.bool)
        keep[0, ..., length // 2:] = False
        keep[-1, ..., :] = B < 3  # the last row of a batch of 3 attends to nothing
        for mask in [None, keep[..., :length], torch.where(keep, 0.0, float("-inf")).to(dtype)[..., :length]]:
            out = torch.ops.got_cpu.decode_attend(q, key, value, mask, D ** -0.5)
            exact = _attention_in_fp64(q, key, value, mask, D ** -0.5)
            ops = _attend(q, key, value, mask, D ** -0.5).double().nan_to_num(0.0)
            assert out.dtype == dtype and out.shape == q.shape
            err, ops_err = (out.double() - exact).abs().max().item(), (ops - exact).abs().max().item()
            assert err <= max(ops_err, 1e-6), (B, kv_heads, group, length, D, err, ops_err)


def test_decoding_without_the_cpu_kernel_gives_the_same_tokens(model, monkeypatch):
    """Where the kernel cannot be built the torch-ops form decodes; in fp32 both are exact to the last bits and the
    greedy tokens agree (batch 4). (In bf16 they may part on random weights: the torch-ops form rounds scores and
    probabilities to bf16, the kernel keeps them in fp32, as SDPA does.)"""
    import copy

    import got.decode

    fp32 = copy.deepcopy(model).float()
    ids, mask, pixels = prompts(fp32, 4)
    with_kernel = generate(fp32, ids, mask, pixels.float())
    monkeypatch.setattr(got.decode, "_cpu_kernel", False)
    assert generate(fp32, ids, mask, pixels.float()) == with_kernel
