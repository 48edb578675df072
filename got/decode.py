"""The CPU decode path: what makes one-token generation steps cheap on a CPU, kept apart from the chat API.

- `decode_attention`: decoder attention for one query row per sequence in one C++ pass (got/csrc, loaded by
  got.kernels; two plain matmuls without it), registered with transformers' AttentionInterface, where SDPA's fused
  kernel costs more than it saves; prompts still use SDPA.
- `PackedLinear`: the decoder's large Linear layers compute bf16 inference products on oneDNN's pre-packed copy of
  the weight, which torch's CPU kernels read ~2x faster than the plain one, with equal results.
- `ChunkedKVCache`: a KV cache that writes each step in place into buffers grown in chunks, instead of concatenating
  the whole cache every token; its one-token step can be compiled (`compile_config`).
All three keep transformers' Qwen2 / OPT modules and weights; docs/benchmarks.md has the figures.
"""
from __future__ import annotations

import ctypes
import inspect
import mmap
import sys
from collections import Counter

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.generation.configuration_utils import CompileConfig
from transformers.models.qwen2.modeling_qwen2 import Qwen2ForCausalLM

# The KV cache's keyword in the decoders' forward() and in generate(): transformers renamed `past_key_values` to
# `cache` (the old name warns, then goes), so the name comes from the installed version.
CACHE = "cache" if "cache" in inspect.signature(Qwen2ForCausalLM.forward).parameters else "past_key_values"

# ---- decoder attention for CPU generation --------------------------------------------------------------------
def decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs):
    """transformers' SDPA for the prompt; for one new token per row (decoding) the project's one-pass CPU kernel
    (got.kernels: keys and values read once per head group, fp32 softmax), or two plain matmuls where it cannot run.

    On CPU SDPA's fused kernel, and the ~10 torch ops of the matmul form, cost more in set-up than the reading of the
    cache at one query (figures: docs/benchmarks.md).
    Registered with transformers' AttentionInterface, so the decoder itself stays transformers' Qwen2 / OPT.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or (dropout and module.training):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    B, H, _, D = query.shape
    q = query.reshape(B, key.shape[1], -1, D)  # grouped-query heads share their key/value head, no repeat_kv copy
    mask = None if attention_mask is None else attention_mask[..., : key.shape[2]]
    scale = D ** -0.5 if scaling is None else scaling
    if _cpu_kernel and query.device.type == "cpu" and D % 16 == 0 and query.dtype in (torch.bfloat16, torch.float32):
        out = torch.ops.got_cpu.decode_attend(q, key, value, mask, scale)  # got/csrc/decode_attend.cpp
    else:  # compiled: an opaque op, since inductor's own code for these small bf16 products is several times slower
        out = (decode_attend_op if torch.compiler.is_compiling() else _attend)(q, key, value, mask, scale)
    return out.reshape(B, H, 1, D).transpose(1, 2), None


_cpu_kernel = False  # got_cpu::decode_attend is loaded (use_decode_attention loads it)


def _attend(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
            scale: float) -> torch.Tensor:
    scores = torch.matmul(q, key.transpose(2, 3)) * scale
    if mask is not None:  # (B, 1, 1, L): bool (True = attend) from the sdpa mask builder, or additive
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    return torch.matmul(probs, value)


@torch.library.custom_op("got::decode_attend", mutates_args=())
def decode_attend_op(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    """`_attend` as an op the compiler calls as it is."""
    return _attend(q, key, value, mask, scale)


@decode_attend_op.register_fake
def _(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
      scale: float) -> torch.Tensor:
    return value.new_empty(*q.shape[:-1], value.shape[-1])


def use_decode_attention(decoder) -> None:
    """Switch a transformers decoder to `decode_attention` (masks built as for SDPA)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    def mask(*args, q_length: int, **kwargs):
        # One-token steps always get a mask: over a ChunkedKVCache it hides the buffer's unfilled tail, which
        # transformers' skip rule (no padding + one query -> no mask) would otherwise let the query see.
        if q_length == 1:
            kwargs["allow_is_causal_skip"] = False
        return sdpa_mask(*args, q_length=q_length, **kwargs)

    global _cpu_kernel
    if decoder.device.type == "cpu":
        from got.kernels import cpu_kernels

        _cpu_kernel = cpu_kernels()
    AttentionInterface.register("got_decode", decode_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register("got_decode", mask)
    decoder.set_attn_implementation("got_decode")
    uses = Counter(id(p) for _, p in decoder.named_parameters(remove_duplicate=False))
    for module in decoder.modules():
        if type(module) is nn.Linear and module.weight.numel() >= PackedLinear.MIN_WEIGHTS:
            module.__class__ = PackedLinear  # same parameters and state_dict; only the bf16 inference product changes
            module.sole = uses[id(module.weight)] == 1  # a tied lm_head keeps the embedding's plain weight


class PackedLinear(nn.Linear):
    """`nn.Linear` whose bf16 products without gradients run on oneDNN's pre-packed (blocked) copy of the weight.

    A decode step is a chain of one-row products whose time is the reading of the weights. On this project's
    2-core machine torch reads plain bf16 weights at 15-23 GB/s (one-row `linear` or `mv`) and the packed copy at
    47-69 GB/s; the results equal `nn.Linear`'s bit for bit at every batch size, so greedy tokens do not change. The
    copy is made on the first such call and again whenever the weight changes in place (load_state_dict).
    fp32, training and small layers (`MIN_WEIGHTS`: there the call overhead, not the reading, sets the time) keep
    `nn.Linear`'s path. Figures: docs/benchmarks.md.

    The plain weight then goes cold: its pages are handed back (`page_out`; a mapped checkpoint's come back from
    the file if read), and a layer that owns its weight alone (`sole`; the lm_head tied to the embedding does not)
    keeps only the packed copy, which holds the same numbers: the plain weight is rebuilt from it, exactly, whenever
    anything asks for it (`layer.weight`, a cast, an fp32 or training call, load_state_dict), and the state_dict
    writes it out without rebuilding it. While released the weight is not among `parameters()`; the Parameter
    object stays the same throughout, so an optimizer that holds it trains the rebuilt weight.
    """

    MIN_WEIGHTS = 1 << 20
    sole = False  # set by use_decode_attention: no other module shares this weight

    @property
    def released(self) -> bool:
        return "weight" not in self._parameters

    def packed(self) -> torch.Tensor:
        if self.released:
            return self._packed
        key = (self.weight.data_ptr(), self.weight._version)  # a new or an in-place changed weight re-packs
        if getattr(self, "_packed_key", None) != key:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), 1)
            self._packed_key = key
            page_out(self.weight)  # the plain copy goes cold: let its memory go
            if self.sole:  # the packed copy is the weight from now on; the Parameter object (which an optimizer
                plain = self.__dict__["_plain"] = self._parameters.pop("weight")  # may hold) stays, empty, to be
                plain.data = plain.data.new_empty(0)  # filled again (kept outside _parameters: not a parameter now)
        return self._packed

    def __getattr__(self, name: str):
        if name == "weight" and "_packed" in self.__dict__ and self.released:  # rebuild the plain weight
            weight = self._plain
            weight.data = self._packed.to_dense()
            rest = dict(self._parameters)
            self._parameters.clear()  # weight first again, as nn.Linear registers it
            self._parameters.update(weight=weight, **rest)
            self._packed_key = (weight.data_ptr(), weight._version)
            return weight
        return super().__getattr__(name)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.released:
            destination[prefix + "weight"] = self._packed.to_dense()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.weight  # noqa: B018 (rebuilt if released, so that it can be loaded into)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, recurse: bool = True):  # .to() / .float() / .cuda(): on the plain weight
        self.weight  # noqa: B018
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:  # copies and pickles hold the plain weight (oneDNN's tensor has no storage)
        state = super().__getstate__()
        if self.released:
            weight = nn.Parameter(self._packed.to_dense(), requires_grad=self._plain.requires_grad)
            state["_parameters"] = {"weight": weight, **self._parameters}
        return {k: v for k, v in state.items() if k not in ("_packed", "_packed_key", "_plain")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.bfloat16 if self.released else self.weight.dtype
        if x.dtype != torch.bfloat16 or dtype != torch.bfloat16 or x.device.type != "cpu" \
                or torch.is_grad_enabled() or not _ONEDNN_BF16:
            return super().forward(x)  # (self.weight rebuilds a released weight)
        if torch.compiler.is_compiling():  # an opaque op on the copy the eager prompt pass made (inductor cannot
            packed = getattr(self, "_packed", None)  # lower the packed product itself)
            return super().forward(x) if packed is None else packed_linear_op(x, packed, self.bias)
        return _packed_linear(x, self.packed(), self.bias)


def page_out(t: torch.Tensor) -> None:
    """Let the kernel take back the memory pages that lie wholly inside CPU tensor `t` (Linux's MADV_PAGEOUT).

    A hint that loses nothing: a weight mapped from its safetensors file (how checkpoints load) comes back from the
    file if anything reads it again, an anonymous one from swap; where neither can happen the pages simply stay.
    It is how the tied embedding of a packed lm_head, whose rows only the few looked-up tokens need, and a layer's
    plain weight after packing stop counting in the process's memory."""
    if _MADVISE is None or t.device.type != "cpu" or t.numel() == 0:
        return
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    start, end = -(-start // _PAGE) * _PAGE, end // _PAGE * _PAGE
    if end > start:
        _MADVISE(start, end - start, 21)  # MADV_PAGEOUT (Linux 5.4+); older kernels answer EINVAL, ignored


def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


_MADVISE, _PAGE = _madvise(), mmap.PAGESIZE
_ONEDNN_BF16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@torch.library.custom_op("got::packed_linear", mutates_args=())
def packed_linear_op(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`_packed_linear` as an op the compiler calls as it is."""
    return _packed_linear(x, packed, bias)


@packed_linear_op.register_fake
def _(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], packed.shape[0])


class ChunkedKVLayer(DynamicLayer):
    """One decoder layer's KV cache for CPU generation: zero-initialised buffers grown CHUNK tokens at a time.

    transformers' DynamicLayer concatenates the whole cache every token: per step it re-allocates and copies all of
    it, which costs more than the attention itself on long answers and fragments the heap (peak RSS grew ~1.3 MB
    per generated token, batch 1). Here a token is one in-place write. The prompt step gets the exact-length views;
    a one-token step gets the whole contiguous buffer, whose unfilled tail the causal mask hides (kv length =
    capacity, as transformers' StaticLayer does), so the attention matmuls run on dense tensors.

    A one-token step touches no Python number: the write position is a tensor and the buffers only grow between
    steps (`ChunkedKVCache.get_mask_sizes`, called by transformers before each step), so the step can be compiled
    (`compile_config`) and is recompiled only when the capacity or the batch changes.
    """

    CHUNK = 64  # a one-token step reads the whole buffer: up to CHUNK - 1 unfilled rows (256 cost the base step 1.5 ms)
    is_compileable = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.keys = self.values = None
        self.cumulative_length = torch.zeros((), dtype=torch.long)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = self.values = None
        self.cumulative_length = torch.zeros((), dtype=torch.long, device=key_states.device)
        self.is_initialized = True

    def _capacity(self, n: int) -> int:
        return -(-n // self.CHUNK) * self.CHUNK

    @property
    def length(self) -> int:
        return int(self.cumulative_length)

    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def reserve(self, n: int) -> None:
        """Room for n tokens (eagerly, between steps): new buffers of the next CHUNK multiple, filled part copied."""
        if self.keys is None or self.keys.shape[-2] >= n:
            return
        old, cap = self.length, self._capacity(n)
        keys = self.keys.new_zeros(*self.keys.shape[:-2], cap, self.keys.shape[-1])
        values = self.values.new_zeros(*self.values.shape[:-2], cap, self.values.shape[-1])
        keys[..., :old, :] = self.keys[..., :old, :]
        values[..., :old, :] = self.values[..., :old, :]
        self.keys, self.values = keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        n = self.length + query_length
        return (max(self._capacity(n), self.capacity()) if query_length == 1 else n), 0

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        q = key_states.shape[-2]
        if q == 1 and self.keys is not None:  # a decode step (compilable): write at the position tensor
            pos = self.cumulative_length.reshape(1)
            self.keys.index_copy_(2, pos, key_states)
            self.values.index_copy_(2, pos, value_states)
            self.cumulative_length.add_(1)
            return self.keys, self.values
        old = self.length  # the prompt (eager)
        n = old + q
        if self.keys is None:
            shape = (*key_states.shape[:-2], self._capacity(n))
            self.keys = key_states.new_zeros(*shape, key_states.shape[-1])
            self.values = value_states.new_zeros(*shape, value_states.shape[-1])
        self.reserve(n)
        self.keys[..., old:n, :] = key_states
        self.values[..., old:n, :] = value_states
        self.cumulative_length.fill_(n)
        return (self.keys, self.values) if q == 1 else (self.keys[..., :n, :], self.values[..., :n, :])

    def reset(self) -> None:
        self.keys = self.values = None
        self.cumulative_length = torch.zeros((), dtype=torch.long)
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("ChunkedKVLayer serves greedy/sampled generation only")

    batch_repeat_interleave = batch_select_indices = reorder_cache = crop


class ChunkedKVCache(DynamicCache):
    """A DynamicCache of ChunkedKVLayer (one per decoder layer, created on first use)."""

    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=ChunkedKVLayer)

    @property
    def is_compileable(self) -> bool:
        """True before the first layer exists too: transformers decides whether to compile before the prompt."""
        return True

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        """transformers asks this (eagerly) before every step: the moment to grow all layers' buffers together."""
        if query_length == 1:
            for layer in self.layers:
                layer.reserve(layer.length + 1)
        return super().get_mask_sizes(query_length, layer_idx)


def compile_config(backend: str = "inductor") -> CompileConfig:
    """transformers' CompileConfig for the one-token step on CPU: inductor, whole graph, fp32 intermediates rounded
    as eager rounds them (so greedy tokens stay those of the eager path). transformers compiles only the decode
    steps, never the prompt; a failed compile falls back to eager with dynamo's warning (`suppress_errors`).
    Compiled code is cached on disk (TORCHINDUCTOR_CACHE_DIR) and reused by later processes.

    Dynamo's guards skip the decoder's modules (`skip_guard_on_all_nn_modules_unsafe`): checking every module
    attribute of a base-preset decoder took 1.3 ms of each 21 ms step. What the skip assumes holds for a decode step:
    a loaded model's modules are not replaced or re-configured afterwards; its weights are still read at every call,
    so in-place changes to them count; inputs, dtypes and grad mode stay guarded."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    options = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
    if backend == "inductor":
        # no debug checks of every buffer's size, stride and alignment in the generated code (~700 calls a step)
        options.update(emulate_precision_casts=True, size_asserts=False, alignment_asserts=False, scalar_asserts=False)
    config = CompileConfig(fullgraph=False, dynamic=None, mode=None, backend=backend, options=options)
    config._compile_all_devices = True  # transformers compiles on GPUs only unless told
    return config
