"""Stage 3 — post-training (paper §4.1), and fine-tuning on your own data.

Starts from a stage-2 (or released, converted) GOT checkpoint; the encoder is frozen (configs: `freeze:
[vision_tower]`, add `projector` to freeze it too), the decoder trains at lr 2e-5 with 8192 tokens on fine-grained
(box / colour), multi-crop and multi-page data plus a replay share of stage-2 data. Fine-tuning is this recipe with
`--from PATH --data my.json` (configs/finetune.yaml); `model.lora.r > 0` trains LoRA adapters on the decoder
instead of its weights (needs `pip install peft`); checkpoints export the merged model.
"""
from __future__ import annotations

import logging
from typing import Any


log = logging.getLogger("got.train")


def build(cfg: dict[str, Any]):
    from got.checkpoint import load_pretrained

    m = cfg["model"]
    if not m["init_from"]:
        raise ValueError("stage 3 / fine-tuning starts from a checkpoint: pass --from PATH (model.init_from)")
    model, tokenizer = load_pretrained(m["init_from"])
    model.float()  # the trainer's precision setting decides the compute dtype; masters stay fp32
    if m["lora"]["r"]:
        if "decoder" in cfg["freeze"]:
            raise ValueError("model.lora trains adapters inside the decoder: remove 'decoder' from freeze")
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ValueError("model.lora.r > 0 needs peft: pip install 'got-ocr[lora]'") from None
        lora = m["lora"]
        model.decoder = get_peft_model(model.decoder, LoraConfig(
            r=int(lora["r"]), lora_alpha=int(lora["alpha"]), lora_dropout=float(lora["dropout"]),
            target_modules=list(lora["target_modules"]), task_type="CAUSAL_LM"))
        log.info("LoRA r=%d on decoder %s", lora["r"], lora["target_modules"])
    return model, tokenizer
