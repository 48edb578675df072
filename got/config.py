"""Model configuration: a vision tower, a projector width, a decoder config dict and the special token ids.

Presets are YAML data in `configs/model/` (shipped in the wheel as `got/configs/model/`: base, stage1, tiny, tiny_stage1). The decoder part is a COMPLETE
transformers config dict (with `model_type`), because partial dicts silently fill with plain Qwen2 defaults.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

# configs/ of the checkout; an installed wheel carries the same files as got/configs/ (see pyproject.toml).
_HERE = Path(__file__).resolve().parent
CONFIG_DIR = next((d for d in (_HERE.parent / "configs", _HERE / "configs") if (d / "model").is_dir()),
                  _HERE.parent / "configs")
PRESET_DIR = CONFIG_DIR / "model"
TOKEN_FIELDS = ("endoftext_id", "im_start_id", "im_end_id", "img_start_id", "img_end_id", "img_pad_id")


@dataclass
class VisionConfig:
    """ViTDet/SAM encoder followed by GOT's two stride-2 convs (net_2, net_3): 1024 px -> 16x16 = 256 tokens.

    `image_size` is a side (square tiles, as GOT) or [height, width]: a text-line preset reads wide, short inputs,
    with `neck_stride` [2, 1] so that net_2/net_3 fold the height away and keep one token column per 8 px of width.
    `ctc_charset` (optional) adds a CTC head on the tokens of a one-row grid: a training aid that teaches the
    tower to read before the decoder can (PP-OCR's guided training), also used at inference to see that an
    input holds no text (docs/default_model.md).
    """

    image_size: int | tuple[int, int] = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    neck_channels: int = 256
    net2_channels: int = 512
    out_channels: int = 1024
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    neck_stride: int | tuple[int, int] = 2
    ctc_charset: str = ""
    ctc_frames: int = 1  # CTC frames per token: 2 halves the frame to 4 px, room for "ll" and thin letters
    ctc_answers: bool = False  # a line model whose CTC head reads better than its decoder answers with the head

    def __post_init__(self) -> None:
        self.global_attn_indexes = tuple(int(i) for i in self.global_attn_indexes)
        if not isinstance(self.image_size, int):
            self.image_size = tuple(int(v) for v in self.image_size)
            if len(self.image_size) != 2:
                raise ValueError(f"vision.image_size must be a side or [height, width], got {list(self.image_size)}")
            if self.image_size[0] == self.image_size[1]:
                self.image_size = self.image_size[0]
        if not isinstance(self.neck_stride, int):
            self.neck_stride = tuple(int(v) for v in self.neck_stride)
        if any(s % self.patch_size for s in self.image_hw):
            raise ValueError(f"vision.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"vision.embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        bad = [i for i in self.global_attn_indexes if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"vision.global_attn_indexes {bad} outside 0..{self.depth - 1}")
        if self.ctc_charset and self.tokens_hw[0] != 1:
            raise ValueError(f"vision.ctc_charset needs a one-row token grid; this one is {self.tokens_hw}")
        if len(set(self.ctc_charset)) != len(self.ctc_charset):
            raise ValueError("vision.ctc_charset repeats a character")
        if self.ctc_frames < 1:
            raise ValueError(f"vision.ctc_frames must be at least 1, got {self.ctc_frames}")
        if self.ctc_answers and not self.ctc_charset:
            raise ValueError("vision.ctc_answers needs a CTC head (vision.ctc_charset)")

    @property
    def reads_lines(self) -> bool:
        """A text-line preset (wide, short input: image_size [height, width])."""
        return not isinstance(self.image_size, int)

    @property
    def image_hw(self) -> tuple[int, int]:
        """(height, width) of one input tile."""
        s = self.image_size
        return (s, s) if isinstance(s, int) else s

    @property
    def stride_hw(self) -> tuple[int, int]:
        s = self.neck_stride
        return (s, s) if isinstance(s, int) else s

    @property
    def grid_hw(self) -> tuple[int, int]:
        """Patch grid (64 x 64 at 1024 px)."""
        return self.image_hw[0] // self.patch_size, self.image_hw[1] // self.patch_size

    @property
    def grid_size(self) -> int:
        """Patch grid side of a square input."""
        h, w = self.grid_hw
        if h != w:
            raise ValueError(f"the patch grid is {h}x{w}, not square; use grid_hw")
        return h

    @property
    def tokens_hw(self) -> tuple[int, int]:
        """Feature map after net_2 and net_3 (two convs of kernel 3, padding 1, stride `neck_stride`)."""
        out = []
        for side, stride in zip(self.grid_hw, self.stride_hw):
            for _ in range(2):
                side = (side - 1) // stride + 1
            out.append(side)
        return out[0], out[1]

    @property
    def num_tokens(self) -> int:
        h, w = self.tokens_hw
        return h * w


@dataclass
class GOTConfig:
    """Everything needed to build a `GOTModel`; `to_dict()` is what `config.json` holds."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    decoder: dict[str, Any] = field(default_factory=dict)
    name: str = "custom"
    endoftext_id: int = 151643
    im_start_id: int = 151644
    im_end_id: int = 151645
    img_start_id: int = 151857
    img_end_id: int = 151858
    img_pad_id: int = 151859

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = _build(VisionConfig, self.vision, "vision")
        if "model_type" not in self.decoder:
            raise ValueError("decoder config needs a model_type (qwen2 or opt)")
        vocab = self.decoder.get("vocab_size")
        if vocab is not None:
            too_big = {k: getattr(self, k) for k in TOKEN_FIELDS if getattr(self, k) >= vocab}
            if too_big:
                raise ValueError(f"special token ids {too_big} do not fit decoder vocab_size {vocab}")

    @property
    def image_token_len(self) -> int:
        """`<imgpad>` tokens per tile (256 at 1024 px)."""
        return self.vision.num_tokens

    @property
    def image_size(self) -> int | tuple[int, int]:
        """A side (square tiles) or (height, width)."""
        return self.vision.image_size

    @property
    def vocab_size(self) -> int:
        return int(self.decoder["vocab_size"])

    @property
    def decoder_type(self) -> str:
        return self.decoder["model_type"]

    @property
    def embed_dim(self) -> int:
        """Width of the decoder's token embeddings, where image features enter: OPT's word_embed_proj_dim
        (its hidden size when unset, as OPTConfig does), Qwen2's hidden size."""
        return int(self.decoder.get("word_embed_proj_dim") or self.decoder["hidden_size"])

    @property
    def tied_embeddings(self) -> bool:
        """Does the decoder's lm_head share the input embeddings' weights (transformers' tie_word_embeddings)?"""
        if "tie_word_embeddings" in self.decoder:  # complete dicts hold it
            return bool(self.decoder["tie_word_embeddings"])
        return bool(self.hf_decoder_config().tie_word_embeddings)

    def hf_decoder_config(self):
        """The transformers config object for the decoder (built from the complete dict)."""
        from transformers import AutoConfig

        kwargs = copy.deepcopy(self.decoder)
        return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["vision"]["global_attn_indexes"] = list(self.vision.global_attn_indexes)
        for k in ("image_size", "neck_stride"):
            if not isinstance(d["vision"][k], int):
                d["vision"][k] = list(d["vision"][k])
        optional = (("neck_stride", 2), ("ctc_charset", ""), ("ctc_frames", 1), ("ctc_answers", False))
        for k, default in optional:  # at their defaults: left out, so released shapes' configs read as before
            if d["vision"][k] == default:
                del d["vision"][k]
        tokens = {k: d.pop(k) for k in TOKEN_FIELDS}
        return {"name": d["name"], "vision": d["vision"], "decoder": d["decoder"], "tokens": tokens}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GOTConfig":
        d = copy.deepcopy(d)
        unknown = set(d) - {"name", "vision", "decoder", "tokens", "model_type"}
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)} (expected name, vision, decoder, tokens)")
        if "decoder" not in d:
            raise ValueError("model config has no 'decoder' section")
        tokens = d.get("tokens", {}) or {}
        bad = set(tokens) - set(TOKEN_FIELDS)
        if bad:
            raise ValueError(f"unknown token ids {sorted(bad)} (expected {list(TOKEN_FIELDS)})")
        return cls(vision=_build(VisionConfig, d.get("vision", {}) or {}, "vision"), decoder=dict(d["decoder"]),
                   name=d.get("name", "custom"), **{k: int(v) for k, v in tokens.items()})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"model_type": "got", **self.to_dict()}, indent=2) + "\n")


def _build(cls, d: dict[str, Any], where: str):
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {where} config keys {sorted(unknown)} (known: {sorted(names)})")
    return cls(**d)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path) -> GOTConfig:
    """A preset name (`base`, `stage1`, `tiny`, `tiny_stage1`), a YAML/JSON file, or a checkpoint directory."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (a checkpoint directory needs config.json)")
    elif not path.is_file():
        preset = PRESET_DIR / f"{name_or_path}.yaml"
        if not preset.is_file():
            raise FileNotFoundError(f"{name_or_path}: neither a config file nor a preset (presets: {', '.join(list_presets())})")
        path = preset
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with name/vision/decoder/tokens")
    try:
        return GOTConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
