"""GOTModel: vision tower -> projector -> decoder (a transformers causal LM, never re-implemented here).

Image features replace the `<imgpad>` embeddings in `input_ids`, row-major over the batch: all tiles of
sample 0, then sample 1, ... (see docs/design.md, "Image batching convention").
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from got.config import GOTConfig
from got.vision_tower import VisionTower

if TYPE_CHECKING:
    from transformers.modeling_outputs import CausalLMOutputWithPast

_DEFERRED = threading.Lock()  # one thread loads a deferred decoder; the others wait for it


def build_decoder(config: GOTConfig) -> nn.Module:
    """The decoder: transformers' causal LM for `config.decoder` (Qwen2 or OPT), randomly initialised."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config.hf_decoder_config(), attn_implementation="sdpa")


class GOTModel(nn.Module):
    def __init__(self, config: GOTConfig, load_decoder: Callable[[], nn.Module] | None = None):
        """`load_decoder`: called on the first use of `self.decoder` instead of building it now. A model whose
        CTC head answers reads without its decoder, and so without importing transformers: seconds of start-up
        (got.checkpoint.load_model(lazy_decoder=True), docs/inference.md)."""
        super().__init__()
        self.config = config
        self.vision_tower = VisionTower(config.vision)
        # Image features enter where token embeddings do: OPT's word_embed_proj_dim, Qwen2's hidden size.
        self.projector = nn.Linear(config.vision.out_channels, config.embed_dim)
        if load_decoder is None:
            self.decoder = build_decoder(config)
        else:
            self._load_decoder, self._decoder_hooks = load_decoder, []

    def __getattr__(self, name: str):
        if name == "decoder" and "_load_decoder" in self.__dict__:
            with _DEFERRED:
                if "_load_decoder" in self.__dict__:
                    decoder = self.__dict__["_load_decoder"]()
                    for fn in self.__dict__.pop("_decoder_hooks"):
                        fn(decoder)
                    self.decoder = decoder
                    del self.__dict__["_load_decoder"]
            return self._modules["decoder"]
        return super().__getattr__(name)

    @property
    def decoder_loaded(self) -> bool:
        """False while a deferred decoder waits for its first use."""
        return "_load_decoder" not in self.__dict__

    def on_decoder(self, fn: Callable[[nn.Module], None]) -> None:
        """fn(decoder) now, or right after a deferred decoder is loaded (int8 weights, decode attention)."""
        if self.decoder_loaded:
            fn(self.decoder)
        else:
            self._decoder_hooks.append(fn)

    # ---- properties -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.projector.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.weight.dtype

    def num_parameters(self, part: str | None = None) -> int:
        """Unique parameters (tied embeddings counted once), of the whole model or of one part; a deferred
        decoder is counted from the weights it waits with, without loading it."""
        waiting = 0 if self.decoder_loaded else self.__dict__["_load_decoder"].num_parameters
        if part == "decoder" and not self.decoder_loaded:
            return waiting
        module = self if part is None else getattr(self, part)
        return sum(p.numel() for p in module.parameters()) + (waiting if part is None else 0)

    def _apply(self, fn, recurse: bool = True):
        """`.to(bfloat16)` must not round the rotary frequencies: in bf16 they are off by ~0.4%, which turns
        into radians of phase error at positions in the thousands. Keep those buffers in fp32."""
        keep = {n: b for n, b in self.named_buffers() if n.endswith("inv_freq") and b.dtype == torch.float32}
        super()._apply(fn, recurse)
        for name, old in keep.items():
            owner, attr = name.rsplit(".", 1)
            module = self.get_submodule(owner)
            module._buffers[attr] = old.to(device=module._buffers[attr].device)
        return self

    def gradient_checkpointing_enable(self) -> None:
        self.vision_tower.gradient_checkpointing = True
        self.decoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ---- image path ----------------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N_tiles, 3, S, S) -> (N_tiles, T, H) in the decoder's input embedding space."""
        return self.projector(self.vision_tower(pixel_values.to(self.dtype)))

    def merge_image_features(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, image_features: torch.Tensor | None
    ) -> torch.Tensor:
        """Put the image feature rows, in order, where `<imgpad>` tokens are; the counts must match exactly."""
        mask = input_ids == self.config.img_pad_id
        n_pad = int(mask.sum())
        n_feat = 0 if image_features is None else image_features.shape[0] * image_features.shape[1]
        if n_pad != n_feat:
            tiles = "no images" if image_features is None else (
                f"{image_features.shape[0]} tiles x {image_features.shape[1]} tokens")
            raise ValueError(
                f"input_ids hold {n_pad} <imgpad> tokens but the images give {n_feat} feature rows ({tiles}); "
                f"each tile needs exactly {self.config.image_token_len} <imgpad> tokens")
        if n_pad == 0:
            return inputs_embeds
        feats = image_features.reshape(-1, inputs_embeds.shape[-1]).to(inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1), feats)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the image features merged in."""
        inputs_embeds = self.decoder.get_input_embeddings()(input_ids)
        features = None if pixel_values is None else self.encode_images(pixel_values)
        return self.merge_image_features(input_ids, inputs_embeds, features)

    # ---- decoder ---------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits (and the shifted next-token loss when labels are given; -100 is ignored)."""
        inputs_embeds = self.embed(input_ids, pixel_values)
        if position_ids is None and attention_mask is not None:
            # Left padding: positions count real tokens only, the same rule generate() uses.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)
        return self.decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                            position_ids=position_ids, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **gen_kwargs,
    ) -> torch.Tensor:
        """NEW tokens only, (B, n_new). Greedy by default; stops at <|im_end|> (or <|endoftext|>).

        The prompt ids go along with the embeddings so that repetition controls such as
        `no_repeat_ngram_size` (the original uses 20) see the whole context, as in the original GOT.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs_embeds = self.embed(input_ids, pixel_values)
        gen_kwargs.setdefault("max_new_tokens", 4096)
        gen_kwargs.setdefault("do_sample", False)
        gen_kwargs.setdefault("eos_token_id", [self.config.im_end_id, self.config.endoftext_id])
        gen_kwargs.setdefault("pad_token_id", self.config.endoftext_id)
        out = self.decoder.generate(input_ids=input_ids, inputs_embeds=inputs_embeds,
                                    attention_mask=attention_mask, **gen_kwargs)
        if not isinstance(out, torch.Tensor):  # return_dict_in_generate=True
            out = out.sequences
        return out[:, input_ids.shape[1]:]
