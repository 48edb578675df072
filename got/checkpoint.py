"""Checkpoints: our HF-style directory, import of the original GOT and transformers got_ocr2 layouts, export
to got_ocr2, and `got convert`.

Layouts (docs/got_facts.md §1). Ours is simply `GOTModel.state_dict()`:
    vision_tower.*  projector.*  decoder.model.*  decoder.lm_head.weight (omitted when tied)
original GOT:       model.vision_tower_high.*  model.mm_projector_vary.*  model.*  lm_head.weight
got_ocr2 current:   model.vision_tower.*  model.multi_modal_projector.{conv_upsampler1,conv_upsampler2,
                    multimodal_projector}.*  model.language_model.*  lm_head.weight
got_ocr2 legacy:    the same without the leading `model.`, and the decoder as language_model.{model.*,lm_head}
Nothing is ever executed from a checkpoint directory: safetensors, or torch.load(weights_only=True) for .bin.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from safetensors.torch import load_file, save_file

from got.config import GOTConfig, VisionConfig, load_config
from got.modeling import GOTModel, build_decoder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
CKPT_RE = re.compile(r"^step-(\d+)$")
# The default model ships inside the package (docs/default_model.md); `None` or "default" names it.
DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default"
DEFAULT_SHARD_BYTES = 2 * 10**9

# Vision-tower names: ours (= original GOT without prefix) <-> transformers got_ocr2 (inside model.vision_tower).
_HF_VISION = [
    (r"^patch_embed\.proj\.", "patch_embed.projection."),
    (r"^blocks\.(\d+)\.norm1\.", r"layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.", r"layers.\1."),
    (r"^neck\.0\.", "neck.conv1."),
    (r"^neck\.1\.", "neck.layer_norm1."),
    (r"^neck\.2\.", "neck.conv2."),
    (r"^neck\.3\.", "neck.layer_norm2."),
]
_HF_VISION_INV = [
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
    (r"^layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
    (r"^layers\.(\d+)\.", r"blocks.\1."),
    (r"^neck\.conv1\.", "neck.0."),
    (r"^neck\.layer_norm1\.", "neck.1."),
    (r"^neck\.conv2\.", "neck.2."),
    (r"^neck\.layer_norm2\.", "neck.3."),
]


def _sub_first(name: str, rules: list[tuple[str, str]]) -> str:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, name)
        if n:
            return new
    return name


# ---- layouts ---------------------------------------------------------------------------------------------
def detect_layout(keys) -> str:
    """'ours', 'original' (GOT release), 'hf' (got_ocr2 current) or 'hf_legacy'."""
    keys = list(keys)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has("model.vision_tower_high."):
        return "original"
    if has("model.vision_tower.") or has("model.multi_modal_projector."):
        return "hf"
    if has("multi_modal_projector.") or has("language_model."):
        return "hf_legacy"
    if has("vision_tower.") or has("decoder."):
        return "ours"
    raise ValueError(f"unrecognised checkpoint layout (first keys: {keys[:5]})")


def to_ours(sd: dict[str, torch.Tensor], layout: str | None = None) -> dict[str, torch.Tensor]:
    """Rename any supported layout to `GOTModel.state_dict()` names."""
    layout = layout or detect_layout(sd)
    out = {}
    for k, v in sd.items():
        if k.endswith("rotary_emb.inv_freq"):  # older Qwen2 checkpoints store this derived buffer
            continue
        if layout == "ours":
            new = k
        elif layout == "original":
            if k.startswith("model.vision_tower_high."):
                new = "vision_tower." + k[len("model.vision_tower_high."):]
            elif k.startswith("model.mm_projector_vary."):
                new = "projector." + k[len("model.mm_projector_vary."):]
            elif k.startswith("model."):
                new = "decoder." + k
            elif k.startswith("lm_head."):
                new = "decoder." + k
            else:
                new = k
        else:
            base = k if layout == "hf_legacy" else (k[len("model."):] if k.startswith("model.") else k)
            if base.startswith("vision_tower."):
                new = "vision_tower." + _sub_first(base[len("vision_tower."):], _HF_VISION_INV)
            elif base.startswith("multi_modal_projector.conv_upsampler1."):
                new = "vision_tower.net_2." + base.split(".", 2)[2]
            elif base.startswith("multi_modal_projector.conv_upsampler2."):
                new = "vision_tower.net_3." + base.split(".", 2)[2]
            elif base.startswith("multi_modal_projector.multimodal_projector."):
                new = "projector." + base.split(".", 2)[2]
            elif layout == "hf" and base.startswith("language_model."):
                new = "decoder.model." + base[len("language_model."):]
            elif layout == "hf_legacy" and base.startswith("language_model."):
                new = "decoder." + base[len("language_model."):]
            elif k.startswith("lm_head."):
                new = "decoder." + k
            else:
                new = k
        out[new] = v
    return out


def from_ours(sd: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Rename our keys to `layout` ('original', 'hf' or 'hf_legacy')."""
    out = {}
    for k, v in sd.items():
        if layout == "ours":
            new = k
        elif k.startswith("vision_tower."):
            rest = k[len("vision_tower."):]
            if layout == "original":
                new = "model.vision_tower_high." + rest
            elif rest.startswith(("net_2.", "net_3.")):
                conv = "conv_upsampler1" if rest.startswith("net_2.") else "conv_upsampler2"
                new = f"multi_modal_projector.{conv}.{rest[6:]}"
            else:
                new = "vision_tower." + _sub_first(rest, _HF_VISION)
        elif k.startswith("projector."):
            rest = k[len("projector."):]
            new = "model.mm_projector_vary." + rest if layout == "original" else "multi_modal_projector.multimodal_projector." + rest
        elif k.startswith("decoder."):
            rest = k[len("decoder."):]
            if layout == "original" or layout == "hf_legacy":
                new = rest if layout == "original" else "language_model." + rest
            elif rest.startswith("model."):
                new = "language_model." + rest[len("model."):]
            else:
                new = rest  # lm_head
        else:
            raise ValueError(f"unexpected key {k!r} in a GOTModel state dict")
        if layout == "hf" and not new.startswith("lm_head."):
            new = "model." + new
        out[new] = v
    return out


# ---- reading files ---------------------------------------------------------------------------------------
def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors / .bin / .pt file, or from a directory (single file or sharded index)."""
    path = Path(path)
    if path.is_dir():
        for name in (WEIGHTS_INDEX, WEIGHTS_NAME, BIN_INDEX, BIN_NAME):
            if (path / name).is_file():
                return load_state_dict_file(path / name)
        raise FileNotFoundError(f"{path}: no weights (expected {WEIGHTS_NAME}, {WEIGHTS_INDEX}, {BIN_NAME} or {BIN_INDEX})")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a shard index (needs a 'weight_map'): {e}") from None
        sd: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (path.parent / shard).is_file():
                raise FileNotFoundError(f"{path.parent / shard}: shard listed in {path.name} is missing")
            sd.update(load_state_dict_file(path.parent / shard))
        return sd
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        if path.suffix in (".bin", ".pt", ".pth"):
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
                sd = sd["state_dict"]
            if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
                raise ValueError("does not hold a flat name -> tensor dict")
            return sd
    except Exception as e:  # corrupt / truncated / pickled code: one line naming the file
        raise ValueError(f"{path}: cannot read weights: {e}") from None
    raise ValueError(f"{path}: unknown weights format (use .safetensors, or .bin/.pt read with weights_only=True)")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None


# ---- configs of foreign layouts ----------------------------------------------------------------------------
def infer_vision_config(sd: dict[str, torch.Tensor]) -> VisionConfig:
    """The vision tower's shape, read off our-named weights (the weights are the truth for imports)."""
    try:
        pos = sd["vision_tower.pos_embed"]
        patch = sd["vision_tower.patch_embed.proj.weight"]
        depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"vision_tower\.blocks\.(\d+)\.", k)))
        grid, embed = pos.shape[1], pos.shape[3]
        head_dim = sd["vision_tower.blocks.0.attn.rel_pos_h"].shape[1]
        glob, window = [], 0
        for i in range(depth):
            size = (sd[f"vision_tower.blocks.{i}.attn.rel_pos_h"].shape[0] + 1) // 2
            if size == grid:
                glob.append(i)
            else:
                window = size
        return VisionConfig(
            image_size=grid * patch.shape[-1], patch_size=patch.shape[-1], embed_dim=embed, depth=depth,
            num_heads=embed // head_dim, mlp_dim=sd["vision_tower.blocks.0.mlp.lin1.weight"].shape[0],
            window_size=window, global_attn_indexes=tuple(glob),
            neck_channels=sd["vision_tower.neck.0.weight"].shape[0],
            net2_channels=sd["vision_tower.net_2.weight"].shape[0], out_channels=sd["vision_tower.net_3.weight"].shape[0],
            qkv_bias="vision_tower.blocks.0.attn.qkv.bias" in sd,
        )
    except (KeyError, ValueError) as e:
        raise ValueError(f"cannot infer the vision tower shape from the weights (missing {e})") from None


def _token_ids(img_pad: int) -> dict[str, int]:
    """GOT's 217 specials keep their released order (docs/got_facts.md §2): <|endoftext|> is 216 before <imgpad>."""
    endoftext = img_pad - 216
    return {"endoftext_id": endoftext, "im_start_id": endoftext + 1, "im_end_id": endoftext + 2,
            "img_start_id": img_pad - 2, "img_end_id": img_pad - 1, "img_pad_id": img_pad}


def _clean_decoder_dict(d: dict, model_type: str) -> dict:
    """A complete decoder config dict from a transformers-style config dict (unknown keys dropped)."""
    from transformers import AutoConfig

    skip = {"architectures", "auto_map", "_name_or_path", "transformers_version", "torch_dtype", "dtype", "model_type",
            "id2label", "label2id", "chunk_size_feed_forward", "is_encoder_decoder", "output_attentions",
            "output_hidden_states", "problem_type", "return_dict", "layer_types"}
    keep = set(AutoConfig.for_model(model_type).to_dict()) - skip
    full = AutoConfig.for_model(model_type, **{k: v for k, v in d.items() if k in keep or k == "rope_theta"}).to_dict()
    return {"model_type": model_type, **{k: v for k, v in full.items() if k in keep}}


def foreign_config(raw: dict, layout: str, sd: dict[str, torch.Tensor]) -> GOTConfig:
    """Our config for an original-GOT or got_ocr2 directory: vision from the weights, decoder from config.json."""
    vision = infer_vision_config(sd)
    if layout == "original":
        model_type = "qwen2" if raw.get("model_type", "").lower() in ("got", "qwen2", "") else raw["model_type"]
        decoder = _clean_decoder_dict({k: v for k, v in raw.items() if not k.startswith(("im_", "image_", "use_im", "vision_"))
                                       and k not in ("freeze_vision_tower", "use_cache_in_training")}, model_type)
        img_pad = int(raw.get("im_patch_token", 151859))
    else:
        text = dict(raw.get("text_config") or {})
        model_type = text.pop("model_type", "qwen2")
        decoder = _clean_decoder_dict(text, model_type)
        img_pad = int(raw.get("image_token_index", raw.get("image_token_id", 151859)))
    return GOTConfig(vision=vision, decoder=decoder, name=f"imported-{layout}", **_token_ids(img_pad))


# ---- loading -----------------------------------------------------------------------------------------------
def _resize_positional(sd: dict[str, torch.Tensor], model: GOTModel, notes: list[str]) -> None:
    """Adapt pos_embed (bicubic) and rel-pos tables (linear) when the preset's grid differs from the weights'."""
    own = model.state_dict()
    for k, v in list(sd.items()):
        if k not in own or own[k].shape == v.shape:
            continue
        if k == "vision_tower.pos_embed" and v.shape[3] == own[k].shape[3]:
            r = F.interpolate(v.permute(0, 3, 1, 2).float(), size=own[k].shape[1:3], mode="bicubic", align_corners=False)
            sd[k] = r.permute(0, 2, 3, 1).to(v.dtype)
        elif re.fullmatch(r"vision_tower\.blocks\.\d+\.attn\.rel_pos_[hw]", k) and v.shape[1] == own[k].shape[1]:
            sd[k] = F.interpolate(v.T[None].float(), size=own[k].shape[0], mode="linear")[0].T.to(v.dtype)
        else:
            continue
        notes.append(f"resized {k} {tuple(v.shape)} -> {tuple(own[k].shape)}")


def load_weights(model: nn.Module, sd: dict[str, torch.Tensor], strict: bool = True, source: str = "checkpoint",
                 tied: bool | None = None) -> list[str]:
    """Load our-named weights; missing / unexpected / mis-shaped keys are reported by name (ValueError when strict).
    `model`: a GOTModel, or a module holding just its `.decoder` (a deferred decoder's load; then give `tied`)."""
    notes: list[str] = []
    if isinstance(model, GOTModel):
        _resize_positional(sd, model, notes)
        tied = model.config.tied_embeddings
    own = model.state_dict()
    lm_key = "decoder.lm_head.weight"
    if tied and lm_key in sd:
        emb_key = next(k for k in own if k.endswith("embed_tokens.weight"))
        if emb_key in sd and not torch.equal(sd[lm_key], sd[emb_key]):
            raise ValueError(f"{source}: lm_head differs from the input embeddings but the config ties them "
                             "(set tie_word_embeddings: false in the decoder config)")
        sd = {k: v for k, v in sd.items() if k != lm_key}
    missing = [k for k in own if k not in sd and not (tied and k == lm_key)]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in sd if k in own and sd[k].shape != own[k].shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems and (strict or mismatched):
        raise ValueError(f"{source}: weights do not fit the model; " + "; ".join(problems))
    notes += problems
    # assign=True: the loaded tensors BECOME the parameters (cast to the model's dtype first), so peak memory
    # is one copy of the weights, not two. Tied weights are re-tied by the caller.
    good = {k: v.to(own[k].dtype) for k, v in sd.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(good, strict=False, assign=True)
    return notes


def load_model(path: str | Path, config: str | GOTConfig | None = None, dtype: torch.dtype | None = None,
               device: str | torch.device | None = None, strict: bool = True, lazy_decoder: bool = False) -> GOTModel:
    """A GOTModel from any model directory `resolve_model_dir` finds (ours, original GOT, got_ocr2, a run or
    checkpoint dir, a cached hub id), or from a bare weights file (+ config).

    lazy_decoder: a model whose CTC head answers (vision.ctc_answers) gets its decoder built and loaded on first
    use, so that reading never imports transformers (2.7-4 s of a CLI run's start-up); other models ignore it."""
    path = Path(path)
    if not path.exists() and not is_repo_id(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    if not path.is_file() and not (config is not None and path.is_dir()):  # a bare weights dir needs no config.json
        path = resolve_model_dir(path)
    raw = None
    if config is None:
        cfg_path = (path if path.is_dir() else path.parent) / CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path}: missing (needed to know the decoder; or pass a config/preset)")
        raw = _read_json(cfg_path)
    sd = load_state_dict_file(path)
    layout = detect_layout(sd)
    sd = to_ours(sd, layout)
    if isinstance(config, GOTConfig):
        cfg = config
    elif config is not None:
        cfg = load_config(config)
    elif layout == "ours" or raw.get("model_type") == "got":
        try:
            cfg = GOTConfig.from_dict(raw)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path / CONFIG_NAME if path.is_dir() else path}: {e}") from None
    else:
        cfg = foreign_config(raw, layout, sd)
    # An untied lm_head in a checkpoint whose config says "tied": honour the weights, not the flag.
    emb = next((k for k in sd if k.endswith("embed_tokens.weight") and k.startswith("decoder.")), None)
    if cfg.decoder.get("tie_word_embeddings", True) and "decoder.lm_head.weight" in sd and emb and \
            not torch.equal(sd["decoder.lm_head.weight"], sd[emb]):
        cfg.decoder["tie_word_embeddings"] = False
    if dtype is None:  # the checkpoint's own dtype, like transformers' dtype="auto"
        floats = [v.dtype for v in sd.values() if v.is_floating_point()]
        dtype = max(set(floats), key=floats.count) if floats else torch.float32
    load_decoder = None
    if lazy_decoder and cfg.vision.ctc_answers:
        held = {k: sd.pop(k) for k in [k for k in sd if k.startswith("decoder.")]}

        def load_decoder() -> nn.Module:  # in the model's dtype and on its device as they are by then
            holder = nn.Module()
            with _allocating(model.dtype, strict):
                holder.decoder = build_decoder(cfg)
            load_weights(holder, held, strict=strict, source=str(path), tied=cfg.tied_embeddings)
            holder.decoder.tie_weights()
            return holder.decoder.to(device=model.device).eval()
        load_decoder.num_parameters = sum(v.numel() for k, v in held.items()
                                          if not (cfg.tied_embeddings and k == "decoder.lm_head.weight"))
    with _allocating(dtype, strict and load_decoder is None):  # tower init is cheap; skipping it needs transformers
        model = GOTModel(cfg, load_decoder)
    model.to(dtype=dtype)  # leaves the fp32 rotary buffers alone (GOTModel._apply)
    load_weights(model, sd, strict=strict, source=str(path))
    if model.decoder_loaded:
        model.decoder.tie_weights()
    model.eval()
    if device is not None:
        model.to(device=device)
    return model


@contextlib.contextmanager
def _allocating(dtype: torch.dtype, skip_init: bool):
    """Modules built inside are allocated in `dtype` and, with skip_init, skip their random init (every weight is
    overwritten by the strict load that follows; a non-strict load keeps an init for missing keys)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        if skip_init:
            from transformers.initialization import no_init_weights

            with no_init_weights():
                yield
        else:
            yield
    finally:
        torch.set_default_dtype(previous)


def load_pretrained(path: str | Path | None = None, dtype: torch.dtype | None = None,
                    device: str | torch.device | None = None, lazy_decoder: bool = False):
    """(GOTModel, GOTTokenizer) from anything `resolve_model_dir` accepts (ours, original GOT or got_ocr2 with a
    tiktoken file; a run or checkpoint dir; a cached hub id; None for the default model).

    dtype None keeps the stored dtype; the rotary frequencies stay fp32 whatever the dtype. lazy_decoder: see
    load_model."""
    from got.tokenizer import GOTTokenizer

    path = resolve_model_dir(path)
    model = load_model(path, dtype=dtype, device=device, lazy_decoder=lazy_decoder)
    tokenizer = GOTTokenizer.from_dir(path)
    cfg = model.config
    if tokenizer.vocab_size > cfg.vocab_size or tokenizer.img_pad_id != cfg.img_pad_id or tokenizer.im_end_id != cfg.im_end_id:
        raise ValueError(f"{path}: tokenizer (vocab {tokenizer.vocab_size}, <imgpad> {tokenizer.img_pad_id}) does not match "
                         f"the model config (vocab {cfg.vocab_size}, <imgpad> {cfg.img_pad_id})")
    return model, tokenizer


# ---- names -> model directories --------------------------------------------------------------------------------
def resolve_model_dir(name: str | os.PathLike | None = None) -> Path:
    """THE rule that turns what a user names into an inference-ready model directory.

    None / "default": the shipped default model. A directory: itself when it holds config.json (ours, released
    GOT, transformers got_ocr2: `load_pretrained` converts the last two on the fly), its `model/` (a checkpoint
    step dir), or the newest complete checkpoint of a training run dir. Otherwise a Hugging Face repo id
    ("stepfun-ai/GOT-OCR2_0") looked up in the local hub cache only: nothing is downloaded.
    """
    if name is None or str(name) == "default":
        if not (DEFAULT_MODEL / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{DEFAULT_MODEL}: the default model is not installed with this package")
        return DEFAULT_MODEL
    p = Path(name)
    if p.is_dir():
        for d in (p, p / "model"):
            if (d / CONFIG_NAME).is_file():
                return d
        ckpt = latest_checkpoint(p / "checkpoints")
        if ckpt is not None and (ckpt / "model" / CONFIG_NAME).is_file():
            return ckpt / "model"
        raise FileNotFoundError(f"{p}: no model here (expected config.json, a checkpoint's model/, or a training run "
                                "with complete checkpoints/)")
    if p.exists():
        raise ValueError(f"{p}: a model is a directory, not a file")
    if is_repo_id(name):
        return _hub_snapshot(str(name))
    raise FileNotFoundError(f"{name}: model directory not found")


def is_repo_id(name: str | os.PathLike) -> bool:
    """"org/name" as the Hugging Face hub spells repo ids (not a path that exists here)."""
    return bool(re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", str(name))) and not Path(name).exists()


def _hub_snapshot(repo_id: str) -> Path:
    """A repo's snapshot in the local Hugging Face cache (HF_HUB_CACHE / HF_HOME), never the network."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        raise FileNotFoundError(f"{repo_id}: not a directory and not in the local Hugging Face cache "
                                f"({constants.HF_HUB_CACHE}); download it there once, or give a directory") from None
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{repo_id}: cached snapshot {path} has no config.json")
    return path


# ---- training checkpoints --------------------------------------------------------------------------------------
def list_checkpoints(root: Path) -> list[Path]:
    """COMPLETE checkpoints, oldest first: a `step-N` dir (renamed from its temp dir) holding trainer_state.json."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CKPT_RE.match(p.name)) and p.is_dir()
             and (p / "trainer_state.json").is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states: saved with each training checkpoint for exact resume."""
    st, pos, has_gauss, gauss = np.random.get_state()[1:]
    state = {"python": random.getstate(), "numpy": [st.tolist(), int(pos), int(has_gauss), float(gauss)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    st, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", np.array(st, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])




# ---- saving --------------------------------------------------------------------------------------------------
def _own_state_dict(model: GOTModel) -> dict[str, torch.Tensor]:
    tied = model.decoder.config.tie_word_embeddings  # first: loads a deferred decoder, so state_dict() holds it
    sd = model.state_dict()
    if tied:
        sd.pop("decoder.lm_head.weight", None)
    return sd


def save_state_dict(sd: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[str]:
    """model.safetensors, or model-0000i-of-0000n.safetensors + index when larger than max_shard_bytes."""
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    total = sum(v.numel() * v.element_size() for v in sd.values())
    for old in list(directory.glob("model*.safetensors")) + [directory / WEIGHTS_INDEX]:
        old.unlink(missing_ok=True)  # stale shards from an earlier save would be mixed in on load
    if total <= max_shard_bytes:
        save_file(sd, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        return [WEIGHTS_NAME]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in sd.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    names, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        names.append(name)
        weight_map.update({k: name for k in shard})
    (directory / WEIGHTS_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return names


def save_pretrained(model: GOTModel, directory: str | Path, tokenizer=None, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """config.json + model.safetensors (sharded when large) + tokenizer files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save(directory / CONFIG_NAME)
    save_state_dict(_own_state_dict(model), directory, max_shard_bytes)
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


def hf_config_dict(cfg: GOTConfig) -> dict:
    """The transformers got_ocr2 config.json for our config; raises where got_ocr2 cannot express the model."""
    from transformers import GotOcr2Config

    v = cfg.vision
    hidden = cfg.hf_decoder_config().hidden_size
    problems = []
    if v.net2_channels != 2 * v.neck_channels:
        problems.append(f"net_2 has {v.net2_channels} channels, got_ocr2 needs 2 x neck = {2 * v.neck_channels}")
    if v.out_channels != hidden:
        problems.append(f"net_3 has {v.out_channels} channels, got_ocr2 needs the decoder hidden size {hidden}")
    if problems:
        raise ValueError(f"model '{cfg.name}' cannot be exported to transformers got_ocr2: " + "; ".join(problems))
    text = cfg.hf_decoder_config().to_dict()
    vision = dict(hidden_size=v.embed_dim, output_channels=v.neck_channels, num_hidden_layers=v.depth,
                  num_attention_heads=v.num_heads, image_size=v.image_size, patch_size=v.patch_size,
                  layer_norm_eps=v.layer_norm_eps, qkv_bias=v.qkv_bias, window_size=v.window_size,
                  global_attn_indexes=list(v.global_attn_indexes), mlp_dim=v.mlp_dim)
    hf = GotOcr2Config(vision_config=vision, text_config=text, image_token_index=cfg.img_pad_id,
                       image_seq_length=cfg.image_token_len, tie_word_embeddings=bool(text.get("tie_word_embeddings", True)))
    d = hf.to_dict()
    d["architectures"] = ["GotOcr2ForConditionalGeneration"]
    return d


def export_hf(model: GOTModel, directory: str | Path, tokenizer=None, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write a directory `transformers.GotOcr2ForConditionalGeneration.from_pretrained` loads (current layout)."""
    directory = Path(directory)
    config = hf_config_dict(model.config)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    save_state_dict(from_ours(_own_state_dict(model), "hf"), directory, max_shard_bytes)
    _write_hf_processor(model.config, directory)
    if tokenizer is not None:
        _write_hf_tokenizer(tokenizer, model.config, directory)
    return directory


def _write_hf_processor(cfg: GOTConfig, directory: Path) -> None:
    """preprocessor_config.json: GOT's resize + CLIP normalisation at the model's image size."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    GotOcr2ImageProcessorPil(size={"height": cfg.image_size, "width": cfg.image_size}).save_pretrained(directory)


def _write_hf_tokenizer(tokenizer, cfg: GOTConfig, directory: Path) -> None:
    """tokenizer.json (a byte-level BPE converted from the tiktoken ranks; same ids) + a transformers
    tokenizer_config.json. The ranks file stays too, so `GOTTokenizer.from_dir` still reads the directory."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from got.tokenizer import ENDOFTEXT, PAT_STR

    tokenizer.save(directory)
    ranks_file = json.loads((directory / "tokenizer_config.json").read_text())["ranks_file"]
    (directory / "tokenizer_config.json").unlink()
    converted = TikTokenConverter(vocab_file=str(directory / ranks_file), pattern=PAT_STR,
                                  extra_special_tokens=tokenizer.special_tokens).converted()
    fast = PreTrainedTokenizerFast(tokenizer_object=converted, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT,
                                   pad_token=ENDOFTEXT, model_max_length=cfg.hf_decoder_config().max_position_embeddings,
                                   clean_up_tokenization_spaces=False)
    fast.save_pretrained(directory)


# ---- got convert ---------------------------------------------------------------------------------------------
def add_cli(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="src", required=True,
                   help="checkpoint directory or weights file: ours, original GOT, or transformers got_ocr2 (current or legacy)")
    p.add_argument("--to", dest="dst", required=True, help="output directory")
    p.add_argument("--format", choices=("got", "hf"), default="got",
                   help="got: this project's layout; hf: transformers got_ocr2 (GotOcr2ForConditionalGeneration)")
    p.add_argument("--config", default=None, help="preset name or config file when the source has no usable config.json")
    p.add_argument("--dtype", choices=("keep", "float32", "bfloat16", "float16"), default="keep")
    p.add_argument("--max-shard-gb", default=str(DEFAULT_SHARD_BYTES / 1e9),
                   help="largest weights file in GB (> 0; a larger model is split into shards; default %(default)s)")


def cli_main(args: argparse.Namespace) -> int:
    from got.checks import check_output, parse_float
    from got.tokenizer import GOTTokenizer

    # options first, before the (possibly large) source is read: one line naming the option
    shard = int(parse_float("--max-shard-gb", args.max_shard_gb, above=0, maximum=1e9) * 1e9)
    if shard < 1:
        raise ValueError(f"--max-shard-gb must be at least 1e-09 (one byte), got {args.max_shard_gb!r}")
    check_output("--to", args.dst, "dir")
    src = Path(args.src)
    model = load_model(src, config=args.config)
    if not src.is_file() and not (args.config and src.is_dir()):
        src = resolve_model_dir(src)
    if args.dtype != "keep":
        model.to(getattr(torch, args.dtype))
    try:
        tokenizer = GOTTokenizer.from_dir(src if src.is_dir() else src.parent)
    except FileNotFoundError:
        tokenizer = None
    out = (export_hf if args.format == "hf" else save_pretrained)(model, args.dst, tokenizer=tokenizer, max_shard_bytes=shard)
    n = model.num_parameters()
    print(f"wrote {out} ({args.format} layout, {n:,} parameters, {next(model.parameters()).dtype}"
          f"{', tokenizer copied' if tokenizer else ', NO tokenizer found next to the source'})")
    return 0
