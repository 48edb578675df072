"""Stage 2 — joint training (paper §4.1).

The encoder comes from a stage-1 checkpoint (its `vision_tower.*` tensors, extracted by name), the projector is fresh
(1024 -> the Qwen width), the decoder is the preset's Qwen2 or a local HF Qwen2 directory (weights included). Every
parameter trains; 6000 tokens; a multi-task mix of every data engine. Settings: configs/stage2.yaml, tiny_stage2.yaml.
"""
from __future__ import annotations

import logging
from typing import Any

from stages import check_tokenizer, load_tokenizer, read_weights

log = logging.getLogger("got.train")


def build(cfg: dict[str, Any]):
    from got.config import load_config
    from got.modeling import GOTModel

    m = cfg["model"]
    mcfg = load_config(m["preset"])
    decoder = None
    if m["decoder_from"]:
        from transformers import AutoConfig, AutoModelForCausalLM

        hf = AutoConfig.from_pretrained(m["decoder_from"], local_files_only=True)
        if hf.model_type != "qwen2":
            raise ValueError(f"{m['decoder_from']}: model_type {hf.model_type!r}; stage 2 expects a Qwen2 decoder")
        full = {k: v for k, v in hf.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        mcfg.decoder = {"model_type": hf.model_type, **full}
        decoder = AutoModelForCausalLM.from_pretrained(m["decoder_from"], local_files_only=True,
                                                       attn_implementation="sdpa", dtype="float32")
    tokenizer = load_tokenizer(cfg)
    check_tokenizer(mcfg, tokenizer)
    model = GOTModel(mcfg)
    if decoder is not None:
        model.decoder = decoder
    if not m["encoder_from"]:
        log.warning("stage 2 without model.encoder_from: the vision tower starts from random weights")
        return model, tokenizer
    from got.checkpoint import resolve_model_dir

    src = resolve_model_dir(m["encoder_from"])
    weights = read_weights(src, "vision_tower.")
    missing, unexpected = model.vision_tower.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"{src}: its vision tower does not match model.preset {m['preset']!r} "
                         f"(missing {missing[:3]}..., unexpected {unexpected[:3]}...)")
    log.info("stage 2: vision tower (%d tensors) from %s; fresh projector; decoder from %s", len(weights), src,
             m["decoder_from"] or f"preset {m['preset']}")
    return model, tokenizer
