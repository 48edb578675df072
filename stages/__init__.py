"""Stage recipes: each says what model to build or load for its stage; the one trainer (got/trainer.py) does the rest.

A recipe module defines `build(cfg) -> (GOTModel, GOTTokenizer)`. Freezing, data, lengths and learning rates are
data in the stage's YAML (configs/stage{1,2,3}.yaml, configs/finetune.yaml), not code.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

# THE registry of stages: name -> (recipe module, its default training config).
RECIPES = {
    "1": ("stages.stage1_pretrain", "configs/stage1.yaml"),
    "2": ("stages.stage2_joint", "configs/stage2.yaml"),
    "3": ("stages.stage3_post", "configs/stage3.yaml"),
    "finetune": ("stages.stage3_post", "configs/finetune.yaml"),  # fine-tuning IS the stage-3 recipe on your data
}


def get_recipe(stage: str):
    if str(stage) not in RECIPES:
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(RECIPES)}")
    return importlib.import_module(RECIPES[str(stage)][0])


def read_weights(path: str | Path, prefix: str) -> dict[str, Any]:
    """The tensors whose names start with `prefix`, read by name from (possibly sharded) safetensors."""
    from safetensors import safe_open

    from got.checkpoint import resolve_model_dir

    d = resolve_model_dir(path)
    index = d / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    out = {}
    for f in files:
        if not (d / f).is_file():
            raise FileNotFoundError(f"{d / f}: missing weights file")
        with safe_open(str(d / f), framework="pt") as sf:
            out.update({k[len(prefix):]: sf.get_tensor(k) for k in sf.keys() if k.startswith(prefix)})
    if not out:
        raise ValueError(f"{d}: no weights named {prefix}* in this checkpoint")
    return out


def load_tokenizer(cfg: dict[str, Any]):
    """model.tokenizer (a dir or a .tiktoken ranks file), else the bundled BPE."""
    from got.tokenizer import GOTTokenizer

    path = cfg["model"]["tokenizer"]
    if path is None:
        return GOTTokenizer.default()
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: tokenizer not found (model.tokenizer)")
    return GOTTokenizer.from_dir(p) if p.is_dir() else GOTTokenizer.from_ranks_file(p)


def fresh_model(cfg: dict[str, Any]):
    """(GOTModel from model.preset, tokenizer), with the tokenizer checked against the model's special ids."""
    from got.config import load_config
    from got.modeling import GOTModel

    mcfg = load_config(cfg["model"]["preset"])
    tokenizer = load_tokenizer(cfg)
    check_tokenizer(mcfg, tokenizer)
    return GOTModel(mcfg), tokenizer


def check_tokenizer(mcfg, tokenizer) -> None:
    from got.config import TOKEN_FIELDS

    wrong = {k: (getattr(mcfg, k), getattr(tokenizer, k)) for k in TOKEN_FIELDS if getattr(mcfg, k) != getattr(tokenizer, k)}
    if wrong:
        raise ValueError(f"tokenizer does not match the model's special token ids (model, tokenizer): {wrong}; "
                         "set model.tokenizer to the tokenizer this model was built for")
    if tokenizer.vocab_size > mcfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the decoder only {mcfg.vocab_size}")
