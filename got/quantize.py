"""Weight-only int8 / int4 for the decoder's Linear layers on CPU, through torch's own kernels.

A batch-1 decode step reads every decoder weight once, so its time follows the bytes of the weights: int8 halves
them and int4 quarters them against bf16. Only the weights are quantised (per output channel for int8, per group
of input columns for int4); activations stay in the model's dtype, so there is no per-step quantisation of
activations (what dynamic quantisation did) and no fp32 copy of the model at load. The kernels are
`aten._weight_int8pack_mm` and `aten._weight_int4pack_mm_for_cpu`, which inductor also lowers when the decode
step is compiled. The decoder stays transformers' Qwen2 / OPT: only its `nn.Linear` modules are swapped.
"""
from __future__ import annotations

import torch
from torch import nn

from got.decode import page_out

BITS = (8, 4)


class WeightOnlyLinear(nn.Module):
    """`nn.Linear` with its weight held in int8 (one scale per output row) or packed int4 (scale and zero per
    group of `group_size` input columns); computes in the input's dtype."""

    def __init__(self, linear: nn.Linear, bits: int = 8, group_size: int = 32):
        super().__init__()
        if bits not in BITS:
            raise ValueError(f"bits={bits}: weight-only quantisation takes {BITS}")
        self.in_features, self.out_features, self.bits = linear.in_features, linear.out_features, bits
        dtype = linear.weight.dtype if linear.weight.dtype != torch.float16 else torch.float32
        self.group_size = group_size if bits == 4 else 0
        w = linear.weight.detach()
        if bits == 4 and w.shape[0] % 16:  # the int4 packing takes rows in 16s: zero rows, cut off in forward
            w = torch.cat([w, w.new_zeros(-w.shape[0] % 16, w.shape[1])])
        q, scales = _quantize_rows(w, bits, group_size)
        if bits == 4:  # the kernel's convention: w = (q - 8) * scale + zero; scales (n, k/g, 2) -> (k/g, n, 2)
            scales = scales.transpose(0, 1).contiguous()
        self.register_buffer("weight_q", q)
        self.register_buffer("scales", scales.to(dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        page_out(linear.weight)  # read once; a tied embedding keeps it for lookups of a few rows

    @staticmethod
    def fits(linear: nn.Linear, bits: int, group_size: int = 32) -> bool:
        """int4 needs whole groups of input columns (output rows are padded to the packing's multiple of 16)."""
        return bits == 8 or linear.in_features % group_size == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).contiguous()  # the kernels take dense rows (a last-token slice is not)
        scales = self.scales.to(x.dtype)
        if self.bits == 8:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight_q, scales)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight_q, self.group_size, scales)
            y = y[:, :self.out_features] if y.shape[1] != self.out_features else y
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{group}"


def _quantize_rows(w: torch.Tensor, bits: int, group_size: int, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scales) of a weight, `chunk` output rows at a time: the fp32 working copy is one chunk, never the whole
    matrix (a 151,860 x 1024 head in fp32 is 0.6 GB, and its temporaries would set the process's peak RSS).
    int8: q (n, k) int8, scales (n,). int4: q packed for the CPU kernel (n, k/2) uint8 (rows pack independently, so
    chunks are packed one by one), scales (n, k/g, 2) = (scale, zero)."""
    n, k = w.shape
    if bits == 8:
        q, scales = torch.empty(n, k, dtype=torch.int8), torch.empty(n)
    else:
        q, scales = torch.empty(n, k // 2, dtype=torch.uint8), torch.empty(n, k // group_size, 2)
    for i in range(0, n, chunk):
        rows = w[i:i + chunk].float()
        if bits == 8:
            scale = rows.abs().amax(dim=1).clamp(min=1e-8) / 127
            q[i:i + chunk] = torch.round(rows / scale[:, None]).clamp_(-128, 127)
            scales[i:i + chunk] = scale
        else:
            g = rows.reshape(len(rows), k // group_size, group_size)
            lo, hi = g.amin(-1), g.amax(-1)
            scale = (hi - lo).clamp(min=1e-8) / 15
            codes = torch.round((g - lo[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.int32)
            q[i:i + chunk] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.reshape(len(rows), k), 1)
            scales[i:i + chunk] = torch.stack([scale, lo + 8 * scale], -1)
    return q, scales


def quantize_weights(module: nn.Module, bits: int = 8, group_size: int = 32) -> int:
    """Swap every `nn.Linear` under `module` (the decoder, lm_head included) for a WeightOnlyLinear, in place;
    returns how many were swapped. A layer int4 cannot group (input columns not a multiple of `group_size`) gets
    int8 instead."""
    swapped = 0
    for name, child in list(module.named_modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, nn.Linear):
                b = bits if WeightOnlyLinear.fits(sub, bits, group_size) else 8
                setattr(child, attr, WeightOnlyLinear(sub, b, group_size))
                swapped += 1
    return swapped
