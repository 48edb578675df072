"""The CPU decode path: what makes one-token generation steps cheap on a CPU, kept apart from the chat API.

- `decode_attention`: decoder attention for one query row per sequence as two plain matmuls (registered with
  transformers' AttentionInterface), where SDPA's fused kernel costs more than it saves; prompts still use SDPA.
- `ChunkedKVCache`: a KV cache that writes each step in place into buffers grown in chunks, instead of concatenating
  the whole cache every token.
Both keep transformers' Qwen2 / OPT modules and weights; docs/benchmarks.md has the figures.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

# ---- decoder attention for CPU generation --------------------------------------------------------------------
def decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs):
    """transformers' SDPA for the prompt; for one new token per row (decoding) two plain matmuls instead.

    On CPU the fused kernel's per-call set-up dominates at one query (figures: docs/benchmarks.md).
    Registered with transformers' AttentionInterface, so the decoder itself stays transformers' Qwen2 / OPT.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or (dropout and module.training):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    B, H, _, D = query.shape
    q = query.reshape(B, key.shape[1], -1, D)  # grouped-query heads share their key/value head, no repeat_kv copy
    scores = torch.matmul(q, key.transpose(2, 3)) * (D ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:  # (B, 1, 1, >= L): bool (True = attend) from the sdpa mask builder, or additive
        mask = attention_mask[..., : key.shape[2]]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    return torch.matmul(probs, value).reshape(B, H, 1, D).transpose(1, 2), None


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

    AttentionInterface.register("got_decode", decode_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register("got_decode", mask)
    decoder.set_attn_implementation("got_decode")


class ChunkedKVLayer(DynamicLayer):
    """One decoder layer's KV cache for CPU generation: zero-initialised buffers grown CHUNK tokens at a time.

    transformers' DynamicLayer concatenates the whole cache every token: per step it re-allocates and copies all of
    it, which costs more than the attention itself on long answers and fragments the heap (peak RSS grew ~1.3 MB
    per generated token, batch 1). Here a token is one in-place write. The prompt step gets the exact-length views;
    a one-token step gets the whole contiguous buffer, whose unfilled tail the causal mask hides (kv length =
    capacity, as transformers' StaticLayer does), so the attention matmuls run on dense tensors.
    """

    CHUNK = 256

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = self.values = None
        self.length = 0
        self.is_initialized = True

    def _capacity(self, n: int) -> int:
        return -(-n // self.CHUNK) * self.CHUNK

    def _full(self, query_length: int) -> bool:
        """A one-token step after the prompt: attend over the whole buffer (the mask covers its capacity)."""
        return query_length == 1 and self.length > 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        n = self.length + query_length
        return (self._capacity(n) if self._full(query_length) else n), 0

    def get_seq_length(self) -> int:
        return self.length

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        full, old = self._full(key_states.shape[-2]), self.length
        n = old + key_states.shape[-2]
        if self.keys is None or self.keys.shape[-2] < n:
            cap = self._capacity(n)
            keys = key_states.new_zeros(*key_states.shape[:-2], cap, key_states.shape[-1])
            values = value_states.new_zeros(*value_states.shape[:-2], cap, value_states.shape[-1])
            if old:
                keys[..., :old, :] = self.keys[..., :old, :]
                values[..., :old, :] = self.values[..., :old, :]
            self.keys, self.values = keys, values
        self.keys[..., old:n, :] = key_states
        self.values[..., old:n, :] = value_states
        self.length = n
        return (self.keys, self.values) if full else (self.keys[..., :n, :], self.values[..., :n, :])

    def reset(self) -> None:
        self.keys = self.values = None
        self.length = 0
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("ChunkedKVLayer serves greedy/sampled generation only")

    batch_repeat_interleave = batch_select_indices = reorder_cache = crop


class ChunkedKVCache(DynamicCache):
    """A DynamicCache of ChunkedKVLayer (one per decoder layer, created on first use)."""

    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=ChunkedKVLayer)
