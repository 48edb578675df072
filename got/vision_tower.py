"""The GOT vision tower: SAM's ViTDet-B image encoder plus GOT's two stride-2 convs (net_2, net_3).

Parameter names follow the original GOT checkpoint (`model.vision_tower_high.*` minus the prefix), so released
weights load unchanged. SAM's decomposed relative position term (MViTv2) is added to the attention scores: as
SDPA's float mask when training or on an accelerator, and in cache-sized blocks of plain GEMMs for CPU inference.
transformers' got_ocr2 computes the same thing with an eager fp32 softmax over whole (N, N) tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from got.config import VisionConfig

# Training and accelerators: the rel-pos mask is (heads, N, N), 12 x 4096^2 at 1024 px; SDPA is called on chunks
# of (tile, head) pairs so that one chunk's mask stays under this many bytes.
MASK_CHUNK_BYTES = 256 * 2**20
# CPU inference: scores are computed in blocks of (heads x query rows x keys) this many elements (4 MB in bf16),
# so that bias, scores and softmax stay in cache instead of streaming N x N tensors through memory.
CPU_BLOCK_ELEMENTS = 2**21
# CPU inference: tiles go through the tower in chunks of at most this many bytes of activations (patch tokens x
# width). A 1024 px tile of the base preset (~25 MB) goes alone and stays in cache; a batch of 8 such tiles streams
# through memory and costs ~25% more per tile. A page's line crops (160 KB each at full width in the default model)
# go eight together (batches are powers of two: _power_of_two_parts), more at narrower widths (ctc_read): one at a
# time, their small GEMMs and per-op overheads cost ~1.6x per crop on one core (24 against 15 ms). Each batch shape
# costs oneDNN primitives (with scratchpads) that stay cached: reading 25 real pages, a dozen per pass peaked at
# 0.80 GB, four per pass at 0.61 GB but ~10% slower (docs/default_model.md).
CPU_CHUNK_BYTES = 2 * 2**20
# A line preset reads a line crop (right-padded to the input width with a constant colour, got.processor.fit_line)
# at its content width plus at least LINE_MARGIN px, rounded up to LINE_STEP px: a real page's crops hold ~40% text
# and ~60% padding, and the tower's cost grows with the width (its global attention with the width squared).
LINE_STEP, LINE_MARGIN = 128, 16


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dim of an NCHW map (SAM's neck)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # (B, H, W, C)


class MLPBlock(nn.Module):
    def __init__(self, dim: int, mlp_dim: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor, crop: bool = False) -> torch.Tensor:
    """Relative position table rows for every (query, key) offset: (q_size, k_size, head_dim).

    The table is linearly resized when it was trained for another size (as in SAM); with `crop` (a line read at
    less than the preset's width) a smaller grid takes the table's middle rows instead: the same offsets, which
    keep the meaning they were trained with (resized, the default model's line CER goes 0.0004 -> 0.006).
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if crop and q_size == k_size and rel_pos.shape[0] > max_rel_dist:
        mid = rel_pos.shape[0] // 2
        rel_pos = rel_pos[mid - q_size + 1:mid + q_size]
    elif rel_pos.shape[0] != max_rel_dist:
        rel_pos = F.interpolate(rel_pos.T[None].float(), size=max_rel_dist, mode="linear")[0].T.to(rel_pos.dtype)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    # index_select: advanced indexing with a 2-D index is ~10x slower on CPU for the same gather.
    return rel_pos.index_select(0, relative.long().flatten()).view(q_size, k_size, -1)


class Attention(nn.Module):
    """Multi-head attention with SAM's decomposed relative position bias, via SDPA."""

    def __init__(self, dim: int, num_heads: int, input_size: int | tuple[int, int], qkv_bias: bool = True,
                 crop: bool = False):
        super().__init__()
        input_hw = (input_size, input_size) if isinstance(input_size, int) else input_size
        self.num_heads, self.crop = num_heads, crop  # crop: a smaller grid is a crop of the trained one (get_rel_pos)
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_hw[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_hw[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        N, nh = H * W, self.num_heads
        q, k, v = self.qkv(x).reshape(B, N, 3, nh, C // nh).permute(2, 0, 3, 1, 4).reshape(3, B * nh, N, -1).unbind(0)
        # bias[(h,w),(kh,kw)] = q.Rh[h,kh] + q.Rw[w,kw]: two small matmuls here, broadcast to (N, N) per chunk.
        # contiguous(): einsum returns permuted layouts, which would make every broadcast add below copy again.
        r_q = q.reshape(-1, H, W, q.shape[-1])
        r_h, r_w = (get_rel_pos(n, n, t, self.crop).to(q.dtype) for n, t in ((H, self.rel_pos_h), (W, self.rel_pos_w)))
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, r_h).contiguous()
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, r_w).contiguous()
        if q.device.type == "cpu" and not torch.is_grad_enabled():
            o = _blocked_attention(q, k, v, rel_h, rel_w)
        else:
            o = _sdpa_attention(q, k, v, rel_h, rel_w)
        o = o.reshape(B, nh, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, C)
        return self.proj(o)


def _bias(rel_h: torch.Tensor, rel_w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(b, h, W, H) + (b, h, W, W) -> the additive bias (b, h * W, H * W) for those query rows."""
    b, h, W = rel_h.shape[:3]
    full = torch.add(rel_h[..., None], rel_w[..., None, :], out=out)
    return full.view(b, h * W, -1)


def _sdpa_attention(q, k, v, rel_h, rel_w) -> torch.Tensor:
    """Fused SDPA with the bias as float mask: no (N, N) probabilities kept for backward; one mask per chunk."""
    BH, N, _ = q.shape
    chunk = max(1, MASK_CHUNK_BYTES // (N * N * q.element_size()))
    out = [F.scaled_dot_product_attention(q[s:s + chunk][None], k[s:s + chunk][None], v[s:s + chunk][None],
                                          attn_mask=_bias(rel_h[s:s + chunk], rel_w[s:s + chunk])[None])[0]
           for s in range(0, BH, chunk)]
    return torch.cat(out) if len(out) > 1 else out[0]


def _blocked_attention(q, k, v, rel_h, rel_w) -> torch.Tensor:
    """Inference on CPU: bias, scores (accumulated into the bias in place), softmax and P @ V per cache-sized
    block of (heads, query image-rows). 2-4x faster than SDPA with a full (N, N) mask at 1024 px (2 cores,
    bf16 and fp32), where the mask and the scores otherwise make several round trips through memory."""
    BH, N, hd = q.shape
    H, W = rel_h.shape[1:3]
    rows = max(1, min(H, CPU_BLOCK_ELEMENTS // (W * N)))
    heads = max(1, min(BH, CPU_BLOCK_ELEMENTS // (rows * W * N)))
    out = torch.empty_like(q)
    k_t, scale = k.transpose(1, 2).contiguous(), hd ** -0.5
    for s in range(0, BH, heads):
        e = min(s + heads, BH)
        for r in range(0, H, rows):
            qs = slice(r * W, min(r + rows, H) * W)
            scores = _bias(rel_h[s:e, r:r + rows], rel_w[s:e, r:r + rows])
            scores.baddbmm_(q[s:e, qs], k_t[s:e], alpha=scale)
            torch.bmm(torch.softmax(scores, dim=-1), v[s:e], out=out[s:e, qs])
    return out


def _power_of_two_parts(n: int, most: int) -> list[int]:
    """n split into batch sizes that are powers of two, none above `most`: 13 -> [8, 4, 1] (most 8). oneDNN keeps
    a primitive (with its buffers) per shape; a page's crops in any number, at any of ctc_read's widths, then come
    in a few shapes instead of dozens (real pages read two at a time: peak RSS 1.47 -> 1.06 GB, same speed)."""
    top = 1 << (max(1, most).bit_length() - 1)
    sizes = [top] * (n // top)
    n -= top * len(sizes)
    return sizes + [1 << b for b in range(n.bit_length() - 1, -1, -1) if n >> b & 1]


def window_partition(x: torch.Tensor, ws: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nWin, ws, ws, C), zero-padding H and W up to multiples of ws (as SAM does)."""
    B, H, W, C = x.shape
    pad_h, pad_w = (ws - H % ws) % ws, (ws - W % ws) % ws
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    # contiguous(): with one row of windows, reshape() returns a strided view, and a Linear over that layout
    # rounds differently in bf16 from the same rows in a batch; a crop must read the same alone or in a batch.
    x = x.view(B, Hp // ws, ws, Wp // ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, C).contiguous()
    return x, (Hp, Wp)


def window_unpartition(windows: torch.Tensor, ws: int, pad_hw: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    Hp, Wp = pad_hw
    H, W = hw
    B = windows.shape[0] // (Hp * Wp // ws // ws)
    x = windows.view(B, Hp // ws, Wp // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    return x[:, :H, :W, :].contiguous() if (Hp, Wp) != (H, W) else x


class Block(nn.Module):
    """Pre-norm transformer block; window attention when window_size > 0, else global."""

    def __init__(self, cfg: VisionConfig, window_size: int):
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        hw = (window_size, window_size) if window_size else cfg.grid_hw
        self.attn = Attention(cfg.embed_dim, cfg.num_heads, hw, cfg.qkv_bias, crop=cfg.reads_lines)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.mlp = MLPBlock(cfg.embed_dim, cfg.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(x), self.window_size, pad_hw, (H, W))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class VisionTower(nn.Module):
    """pixels (N, 3, H, W) -> features (N, T, out_channels), T = `cfg.num_tokens`; 1024 px -> (N, 256, 1024).

    With `cfg.ctc_charset`, `ctc_logits(features)` gives per-token scores over blank + the charset."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.config = cfg
        self.gradient_checkpointing = False  # the trainer switches this on; recomputes each block in backward
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, *cfg.grid_hw, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(cfg, 0 if i in cfg.global_attn_indexes else cfg.window_size) for i in range(cfg.depth)
        )
        n, c = cfg.neck_channels, cfg.embed_dim
        self.neck = nn.Sequential(
            nn.Conv2d(c, n, kernel_size=1, bias=False),
            LayerNorm2d(n),
            nn.Conv2d(n, n, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(n),
        )
        st = cfg.stride_hw
        self.net_2 = nn.Conv2d(n, cfg.net2_channels, kernel_size=3, stride=st, padding=1, bias=False)
        self.net_3 = nn.Conv2d(cfg.net2_channels, cfg.out_channels, kernel_size=3, stride=st, padding=1, bias=False)
        classes = len(cfg.ctc_charset) + 1
        self.ctc_head = nn.Linear(cfg.out_channels, cfg.ctc_frames * classes) if cfg.ctc_charset else None

    def ctc_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, T, out_channels) tower features -> (N, T * ctc_frames, 1 + len(charset)); class 0 is the CTC blank.

        A token covers a strip of the line (8 px in the default model); CTC needs a frame per letter and a blank
        between doubled ones, so at a frame per token thin letters ("ill", "still") lose one. `ctc_frames` frames
        per token lift that limit."""
        if self.ctc_head is None:
            raise ValueError("this vision tower has no CTC head (vision.ctc_charset is empty)")
        n, t, _ = features.shape
        return self.ctc_head(features).view(n, t * self.config.ctc_frames, -1)

    def ctc_decode(self, features: torch.Tensor) -> list[tuple[str, float]]:
        """Greedy CTC reading of each input: (text, mean max-probability of its non-blank frames; 0 if none)."""
        probs = self.ctc_logits(features).float().softmax(-1)
        best, idx = probs.max(-1)
        out = []
        for p, row in zip(best.tolist(), idx.tolist()):
            chars, conf, prev = [], [], 0
            for q, k in zip(p, row):
                if k and k != prev:
                    chars.append(self.config.ctc_charset[k - 1])
                    conf.append(q)
                prev = k
            out.append(("".join(chars), sum(conf) / len(conf) if conf else 0.0))
        return out

    @torch.inference_mode()
    def ctc_read(self, pixel_values: torch.Tensor) -> list[tuple[str, float]]:
        """Line crops (N, 3, H, W) -> ctc_decode's (text, confidence) each, every crop read at its content width
        (LINE_STEP, LINE_MARGIN), crops of one width together. A line preset only: its crops are right-padded
        with one colour, and a narrower grid is a crop of the trained one (pos_embed and rel_pos sliced, not
        resized); on the default model this reads real pages ~1.5x faster, at about the same CER."""
        if not self.config.reads_lines:
            return self.ctc_decode(self(pixel_values))
        full = pixel_values.shape[-1]
        ink = (pixel_values != pixel_values[..., -1:]).flatten(1, 2).any(1)  # (N, W): columns unlike the padding
        last = torch.where(ink.any(1), full - ink.flip(1).int().argmax(1), 0)
        widths = ((last + LINE_MARGIN + LINE_STEP - 1) // LINE_STEP * LINE_STEP).clamp(LINE_STEP, full).tolist()
        out: list[tuple[str, float]] = [("", 0.0)] * len(widths)
        for w in sorted(set(widths)):
            rows = [i for i, v in enumerate(widths) if v == w]
            for i, read in zip(rows, self.ctc_decode(self(pixel_values[rows, ..., :w]))):
                out[i] = read
        return out

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be (N, 3, S, S), got {tuple(pixel_values.shape)}")
        p = self.config.patch_size
        if pixel_values.shape[2] % p or pixel_values.shape[3] % p:
            raise ValueError(f"image size {tuple(pixel_values.shape[2:])} is not a multiple of the patch size {p}")
        if pixel_values.device.type == "cpu" and not torch.is_grad_enabled():
            tile = (pixel_values.shape[2] // p) * (pixel_values.shape[3] // p) * self.config.embed_dim
            chunk = max(1, CPU_CHUNK_BYTES // (tile * self.pos_embed.element_size()))
            sizes = _power_of_two_parts(len(pixel_values), chunk)
            if len(sizes) > 1:
                starts = [sum(sizes[:i]) for i in range(len(sizes))]
                return torch.cat([self(pixel_values[s:s + n]) for s, n in zip(starts, sizes)])
        x = self.patch_embed(pixel_values.to(self.pos_embed.dtype))
        x = x + self._pos_embed(x.shape[1], x.shape[2])
        for blk in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        x = self.neck(x.permute(0, 3, 1, 2))
        x = self.net_3(self.net_2(x))
        return x.flatten(2).transpose(1, 2)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        """The absolute position embedding, bicubically resized when the patch grid differs from the stored one; a
        line preset's narrower grid (ctc_read) takes its left columns instead."""
        pos = self.pos_embed
        if pos.shape[1:3] == (h, w):
            return pos
        if self.config.reads_lines and h == pos.shape[1] and w < pos.shape[2]:
            return pos[:, :, :w]
        pos = F.interpolate(pos.permute(0, 3, 1, 2).float(), size=(h, w), mode="bicubic", align_corners=False)
        return pos.permute(0, 2, 3, 1).to(self.pos_embed.dtype)
