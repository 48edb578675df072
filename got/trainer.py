"""The one trainer: every stage and fine-tuning run through `train(cfg)`; a stage recipe only builds the model.

    got train --stage 1|2|3|finetune --config configs/stage1.yaml [train.lr=2e-5 data.max_length=2048 ...]

Drives `deepspeed.initialize` directly (no accelerate: it is broken with DeepSpeed on CPU) and runs the same under
`deepspeed`, `torchrun` or as one plain process. What it fixes relative to the original GOT trainer:
- frozen modules really are frozen (requires_grad False AND left out of the optimizer) and a trained vision tower
  is NOT run under no_grad;
- a bad sample is skipped, counted and logged by path, never replaced by another sample;
- the loss is the token mean over the whole global batch (not a mean of micro-batch means);
- checkpoints are atomic (temp dir + rename) and `--resume auto` continues bit-exactly: model, optimizer,
  scheduler, every rank's RNG and the data position (the global step: the data order is a function of it).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from got.checkpoint import latest_checkpoint, list_checkpoints, rng_state, set_rng_state
from got.config import CONFIG_DIR

REPO = CONFIG_DIR.parent  # "configs/..." paths resolve here: the checkout, or the installed package (wheel)
log = logging.getLogger("got.train")

# Every key a training config may hold; YAML files and key=value overrides are checked against it.
DEFAULTS: dict[str, Any] = {
    "model": {
        "preset": "tiny",            # configs/model/<preset>.yaml (or a YAML/JSON file) for a fresh model
        "init_from": None,           # a GOT checkpoint dir (ours, or converted released weights) to start from
        "encoder_from": None,        # stage 2: take the vision tower from this stage-1 checkpoint
        "decoder_from": None,        # stage 2: a local HF Qwen2 directory for the decoder (weights + config)
        "tokenizer": None,           # dir / .tiktoken file; default: the checkpoint's, else the bundled BPE
        "lora": {"r": 0, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    },
    "freeze": [],                    # any of vision_tower, projector, decoder
    "data": {
        "sources": [],               # [{json|shards|engine: ..., weight: 1.0, image_root: ..., options: {...}}]
        "samples_per_epoch": None,   # default: the total size of the finite sources
        "max_length": 4096,
        "max_tiles": 6,
        "packing": False,
        "num_workers": 2,
    },
    "train": {
        "epochs": 1,
        "max_steps": None,           # overrides epochs
        "global_batch_size": 128,
        "micro_batch_size": 4,
        "lr": 1.0e-4,
        "min_lr_ratio": 0.0,
        "warmup_ratio": 0.001,
        "warmup_steps": None,        # overrides warmup_ratio
        "weight_decay": 0.0,         # the original GOT scripts use 0; never applied to biases, norms, embeddings
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
        "grad_clip": 1.0,
        "ctc_weight": 1.0,           # the CTC term of a tower with a CTC head (vision.ctc_charset); 0 turns it off
        "max_skip_ratio": 0.5,       # stop (non-zero exit) when more of the samples seen were skipped ...
        "skip_check_steps": 20,      # ... from this step on (a shorter run: at its last step); all skipped: always
        "precision": "bf16",         # bf16 | fp16 | fp32
        "gradient_checkpointing": False,
        "deepspeed": "configs/deepspeed/zero2.json",
        "seed": 42,
    },
    "output": {
        "dir": "runs/train",
        "save_every": 1000,
        "keep_last": 3,
        "log_every": 1,
    },
}
MODULES = ("vision_tower", "projector", "decoder")


# ---- config --------------------------------------------------------------------------------------------------------
def _merge(base: dict, new: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in (new or {}).items():
        if k not in base:
            raise ValueError(f"unknown config key {where}{k!r} (known: {', '.join(base)})")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ValueError(f"config key {where}{k} must be a mapping")
            out[k] = _merge(base[k], v, f"{where}{k}.")
        else:
            out[k] = v
    return out


def _check_types(cfg: dict, defaults: dict, where: str = "") -> None:
    """Every value has its default's type (numbers finite; an int where the default is an int; None defaults
    take anything), so `train.lr=fast` or `train.epochs: 1.5` fails here naming the key, not an hour later."""
    for k, default in defaults.items():
        v, key = cfg[k], f"{where}{k}"
        if isinstance(default, dict):
            _check_types(v, default, key + ".")
        elif default is None:
            continue
        elif isinstance(default, bool):
            if not isinstance(v, bool):
                raise ValueError(f"config key {key} must be true or false, got {v!r}")
        elif isinstance(default, (int, float)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"config key {key} must be a finite number, got {v!r}")
            if isinstance(default, int) and not float(v).is_integer():
                raise ValueError(f"config key {key} must be a whole number, got {v!r}")
        elif isinstance(default, (list, str)) and not isinstance(v, type(default)):
            raise ValueError(f"config key {key} must be a {type(default).__name__}, got {v!r}")


def resolve_path(p: str | Path) -> Path:
    """As given (relative to the working dir), else relative to the repository (configs/... work from anywhere)."""
    p = Path(p).expanduser()
    return p if p.exists() or p.is_absolute() else (REPO / p if (REPO / p).exists() else p)


def _scalar(text: str) -> Any:
    """YAML value, with `2e-5` read as a number (YAML 1.1 wants `2.0e-5`)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def load_train_config(path: str | Path | None, overrides: list[str] = ()) -> dict[str, Any]:
    """DEFAULTS <- YAML file <- `a.b=value` overrides (values parsed as YAML: 2e-5, true, [a, b])."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = resolve_path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{path}: training config not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{p}: expected a mapping of model / freeze / data / train / output")
        try:
            cfg = _merge(cfg, data)
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from None
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"override {item!r}: expected key=value, e.g. train.lr=2e-5")
        node, parts = cfg, key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"override {item!r}: unknown config key {key!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ValueError(f"override {item!r}: unknown config key {key!r}")
        node[parts[-1]] = _scalar(value)
    _check_types(cfg, DEFAULTS)
    bad = set(cfg["freeze"]) - set(MODULES)
    if bad:
        raise ValueError(f"freeze: unknown modules {sorted(bad)}; choose from {', '.join(MODULES)}")
    if cfg["train"]["precision"] not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"train.precision must be bf16, fp16 or fp32, not {cfg['train']['precision']!r}")
    return cfg


# ---- distributed ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on this host now (for MASTER_PORT of a world of one, or a test torchrun)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, int]:
    """(rank, world, local_rank) under deepspeed / torchrun, or a world of one for a plain process."""
    _cpu_accelerator()
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated")  # DeepSpeed's ZeRO calls
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    deepspeed.init_distributed(timeout=datetime.timedelta(minutes=30))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return rank, world, local


def _dist():
    import torch.distributed as dist

    return dist


# ---- model surgery --------------------------------------------------------------------------------------------------
def apply_freeze(model: torch.nn.Module, freeze: list[str]) -> None:
    """requires_grad False for the named modules; `param_groups` then leaves them out of the optimizer."""
    for name in MODULES:
        module = getattr(model, name)
        if name in freeze:
            module.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"freeze: {freeze} leaves nothing to train")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters only; no decay on biases, norms (1-D), position tables and embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.ndim < 2 or "embed" in name or "pos_embed" in name or "rel_pos" in name or "norm" in name
        (no_decay if plain else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(warmup: int, total: int, min_ratio: float = 0.0):
    """lr multiplier: linear 0 -> 1 over `warmup` steps, then cosine down to `min_ratio` at `total`."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def deepspeed_config(cfg: dict[str, Any], world: int) -> dict[str, Any]:
    """The ZeRO/offload JSON from configs/deepspeed/ plus the batch, clipping and precision from the YAML."""
    t = cfg["train"]
    path = resolve_path(t["deepspeed"])
    if not path.is_file():
        raise FileNotFoundError(f"{t['deepspeed']}: DeepSpeed config not found (see configs/deepspeed/)")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    micro, glob_bs = int(t["micro_batch_size"]), int(t["global_batch_size"])
    if glob_bs % (micro * world):
        raise ValueError(f"train.global_batch_size {glob_bs} is not a multiple of micro_batch_size {micro} x "
                         f"{world} ranks")
    ds.update(train_batch_size=glob_bs, train_micro_batch_size_per_gpu=micro,
              gradient_accumulation_steps=glob_bs // (micro * world), gradient_clipping=float(t["grad_clip"] or 0),
              bf16={"enabled": t["precision"] == "bf16"}, fp16={"enabled": t["precision"] == "fp16"},
              steps_per_print=10**9, wall_clock_breakdown=False)
    ds.setdefault("zero_allow_untested_optimizer", True)
    return ds


# ---- checkpoints ---------------------------------------------------------------------------------------------------
def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _config_changes(saved: Path, cfg: dict[str, Any]) -> list[str]:
    """Keys whose values differ from the run's saved config.yaml (output.* aside)."""
    if not saved.is_file():
        return []
    old, new = _flat(yaml.safe_load(saved.read_text()) or {}), _flat(json.loads(json.dumps(cfg)))
    return sorted(k for k in old.keys() | new.keys() if not k.startswith("output.") and old.get(k) != new.get(k))


def _point(link: Path, target: Path) -> None:
    """RUN/model -> the newest complete checkpoint's model, so `got chat --model RUN/model` always works."""
    try:
        tmp = link.with_name(".model.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.path.relpath(target, link.parent))
        os.replace(tmp, link)
    except OSError:  # a file system without symlinks: summary.json still names the model
        pass


def _fault(kind: str, step: int) -> None:
    """Fault injection for resume drills: GOT_TRAIN_KILL_AT=step:N (after step N) or save:N (mid-checkpoint)."""
    if os.environ.get("GOT_TRAIN_KILL_AT") == f"{kind}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _gathered(params: list[torch.nn.Parameter], zero3: bool):
    """Inside the block every rank holds the full ZeRO-3 parameters (a no-op for ZeRO 0-2)."""
    if not zero3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def export_model(model, tokenizer, out: Path, rank: int = 0, zero3: bool = False) -> None:
    """Inference-ready weights (safetensors + config + tokenizer); gathers ZeRO-3 shards, merges LoRA."""
    from got.checkpoint import save_pretrained

    with _gathered(list(model.parameters()), zero3):
        if rank == 0:
            if hasattr(model.decoder, "merge_and_unload"):  # LoRA: export a merged copy, keep training the adapter
                model = copy.deepcopy(model)
                model.decoder = model.decoder.merge_and_unload()
            save_pretrained(model, out, tokenizer=tokenizer)


def save_checkpoint(engine, model, tokenizer, root: Path, step: int, state: dict[str, Any], rank: int,
                    keep_last: int) -> Path:
    """temp dir -> DeepSpeed state + per-rank RNG + export + trainer_state.json (last) -> atomic rename."""
    dist = _dist()
    final, tmp = root / f"step-{step:08d}", root / f".tmp-step-{step:08d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    engine.save_checkpoint(str(tmp), tag="deepspeed", client_state={"trainer": state}, save_latest=False)
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(rng_state(), tmp / "rng" / f"rank{rank}.pt")
    _fault("save", step)
    export_model(model, tokenizer, tmp / "model", rank, zero3=engine.zero_optimization_stage() == 3)
    dist.barrier()
    if rank == 0:
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _point(root.parent / "model", final / "model")
        for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


# ---- logging -------------------------------------------------------------------------------------------------------
def open_log(out: Path, rank: int) -> None:
    """Rank 0 logs to out/train.log (INFO) and stderr (warnings); other ranks stay quiet."""
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.propagate = False
    if rank != 0:
        log.addHandler(logging.NullHandler())
        return
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("[got train] %(message)s"))
    console.setLevel(logging.WARNING)
    log.addHandler(handler)
    log.addHandler(console)
    log.setLevel(logging.INFO)


class RunLog:
    """Rank 0: train.log, metrics.jsonl, TensorBoard (if installed), tqdm bar, loss-curve PNG at the end."""

    def __init__(self, out: Path, rank: int, total_steps: int, start_step: int):
        self.out, self.rank, self.active = out, rank, rank == 0
        self.tb = self.bar = None
        if not self.active:
            return
        # On resume keep only the metrics up to the resumed step, so the curve has no doubled stretch.
        self.metrics_path = out / "metrics.jsonl"
        if self.metrics_path.exists():
            rows = [r for r in self._read() if r["step"] <= start_step]
            self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1)
        except ImportError:
            pass
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def _read(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def step(self, row: dict[str, Any], write: bool) -> None:
        if not self.active:
            return
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}",
                             samples_s=f"{row['samples_per_s']:.1f}", tokens_s=f"{row['tokens_per_s']:.0f}")
        if write:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if self.tb is not None:
                for k in ("loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "skipped_total"):
                    if row.get(k) is not None:
                        self.tb.add_scalar(f"train/{k}", row[k], row["step"])

    def close(self) -> None:
        if not self.active:
            return
        self.bar.close()
        if self.tb is not None:
            self.tb.close()
        rows = self._read() if self.metrics_path.exists() else []
        if rows:
            plot_loss(rows, self.out / "loss.png")


def plot_loss(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, loss = [r["step"] for r in rows], [r["loss"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, lw=0.8, alpha=0.4, label="loss")
    k = max(1, len(loss) // 50)
    if k > 1:
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=1.6, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (token mean)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in rows], color="gray", lw=0.8, ls="--")
    ax2.set_ylabel("lr", color="gray")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- the loop ------------------------------------------------------------------------------------------------------
def _token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross entropies over supervised positions (fp32), from full logits (reference)."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                             ignore_index=-100, reduction="sum")


class TokenLoss(torch.nn.Module):
    """What DeepSpeed trains: the GOTModel plus its loss, with logits computed ONLY where a label is supervised.

    GOT's prompt (system text, 256 image tokens per tile, the query) and the padding are never targets, so the
    largest matmul of a step (hidden x vocab) and the fp32 logits (8192 x 151860 x 4 B = 5 GB per sample at
    stage 3) are skipped for them. Returns the summed cross entropy; the caller normalises over the global batch.

    A tower with a CTC head (vision.ctc_charset) adds `ctc_weight` x the summed CTC loss of each one-tile sample
    against its answer text (decoded from the labels, so every data source gets it for free); samples whose
    answer uses a character outside the charset are left out of that term. `last_ctc` keeps the last value.
    """

    def __init__(self, model: torch.nn.Module, tokenizer=None, ctc_weight: float = 1.0):
        super().__init__()
        self.model = model
        self.use_ctc = getattr(model.vision_tower, "ctc_head", None) is not None and ctc_weight > 0
        if self.use_ctc and tokenizer is None:
            raise ValueError("a vision tower with a CTC head trains with the tokenizer (to read the answer text)")
        self.tokenizer, self.ctc_weight = tokenizer, ctc_weight
        self.charset = {c: i + 1 for i, c in enumerate(model.config.vision.ctc_charset)}
        self.last_ctc = 0.0

    def forward(self, input_ids, labels, pixel_values=None, attention_mask=None, position_ids=None):
        m, self.last_ctc = self.model, 0.0
        tower = None if pixel_values is None else m.vision_tower(pixel_values.to(m.dtype))
        embeds = m.merge_image_features(input_ids, m.decoder.get_input_embeddings()(input_ids),
                                        None if tower is None else m.projector(tower))
        hidden = m.decoder.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask,
                                         position_ids=position_ids, use_cache=False).last_hidden_state
        target = labels[:, 1:]
        keep = target != -100
        logits = m.decoder.get_output_embeddings()(hidden[:, :-1][keep])
        loss = torch.nn.functional.cross_entropy(logits.float(), target[keep], reduction="sum")
        if self.use_ctc and tower is not None and tower.shape[0] == input_ids.shape[0]:
            ctc = self._ctc(tower, labels)
            self.last_ctc = float(ctc.detach())
            loss = loss + self.ctc_weight * ctc
        return loss

    def _ctc(self, tower: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rows, targets = [], []
        for i, row in enumerate(labels):
            text = self.tokenizer.decode(row[row != -100].tolist(), skip_special_tokens=True).strip()
            ids = [self.charset.get(c) for c in text]
            if text and None not in ids:
                rows.append(i)
                targets.append(torch.tensor(ids))
        if not rows:
            return tower.sum() * 0.0  # keeps every parameter in the graph (DeepSpeed expects gradients)
        logp = self.model.vision_tower.ctc_logits(tower[rows]).float().log_softmax(-1).transpose(0, 1)
        lengths = torch.tensor([len(t) for t in targets])
        return torch.nn.functional.ctc_loss(logp, torch.cat(targets), torch.full((len(rows),), logp.shape[0]),
                                            lengths, reduction="sum", zero_infinity=True)


def _to(batch: dict[str, Any], device) -> dict[str, Any]:
    keys = ("input_ids", "labels", "pixel_values", "attention_mask", "position_ids")
    return {k: batch[k].to(device) if isinstance(batch.get(k), torch.Tensor) else batch.get(k) for k in keys}


def _dummy_batch(cfg_model) -> dict[str, Any]:
    """One blank image and its image block, all labels -100: lets a rank whose samples were all skipped join the
    collective backward with zero gradients (no sample is substituted: nothing here is supervised)."""
    c = cfg_model
    ids = [c.img_start_id] + [c.img_pad_id] * c.image_token_len + [c.img_end_id]
    return {"input_ids": torch.tensor([ids]), "labels": torch.full((1, len(ids)), -100),
            "pixel_values": torch.zeros(1, 3, *c.vision.image_hw),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long), "position_ids": None}


def _fingerprint(engine, model: torch.nn.Module) -> float:
    """A cheap checksum of all weights, to confirm every rank holds the same model at the end."""
    params = list(model.parameters())
    with _gathered(params, engine.zero_optimization_stage() == 3):
        return float(sum(p.detach().double().sum() + p.detach().double().abs().sum() * 1e-3 for p in params))


@dataclass
class Run:
    """One training job as the loop sees it: config, model, engine, data and the counters a checkpoint keeps."""
    cfg: dict[str, Any]
    stage: str
    out: Path
    model: torch.nn.Module
    tokenizer: Any
    engine: Any
    scheduler: Any
    dataset: Any
    rank: int
    world: int
    micro: int
    accum: int
    total: int
    steps_per_epoch: int
    warmup: int
    n_params: int
    n_train: int
    step: int = 0
    skipped_total: int = 0
    samples_total: int = 0
    tokens_total: int = 0
    last_save: int = 0

    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def state(self, loss: float) -> dict[str, Any]:
        return {"step": self.step, "total_steps": self.total, "epoch": (self.step - 1) // self.steps_per_epoch,
                "skipped_total": self.skipped_total, "samples_total": self.samples_total,
                "tokens_total": self.tokens_total, "world_size": self.world, "stage": self.stage, "loss": loss}


def build(cfg: dict[str, Any], stage: str) -> Run:
    """Data sources, the stage recipe's model, the DeepSpeed engine (optimizer, warmup + cosine schedule)."""
    from got.data import MixedDataset, SampleEncoder, build_source
    from stages import get_recipe

    t, d = cfg["train"], cfg["data"]
    out = Path(cfg["output"]["dir"])
    _cpu_accelerator()  # before anything imports deepspeed
    open_log(out, int(os.environ.get("RANK", 0)))
    seed = int(t["seed"])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    # data sources and model first: a wrong path fails in a second, before any process group starts
    sources = [build_source(s, seed, i) for i, s in enumerate(d["sources"])]
    model, tokenizer = get_recipe(stage).build(cfg)  # the stage recipe says what to build / load
    apply_freeze(model, cfg["freeze"])
    if t["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
    mcfg = model.config
    # data: a deterministic function of (seed, step)
    encoder = SampleEncoder(tokenizer, mcfg.image_size, mcfg.image_token_len, int(d["max_length"]),
                            int(d["max_tiles"]))
    if d["packing"] and mcfg.decoder_type != "qwen2":
        raise ValueError("data.packing needs a decoder that separates packed samples by position_ids (qwen2)")
    dataset = MixedDataset(sources, [float(s.get("weight", 1.0)) for s in d["sources"]], encoder,
                           d["samples_per_epoch"], seed)
    rank, world, _ = init_distributed()
    import deepspeed

    ds_cfg = deepspeed_config(cfg, world)
    steps_per_epoch = len(dataset) // ds_cfg["train_batch_size"]
    if steps_per_epoch == 0:
        raise ValueError(f"an epoch of {len(dataset)} samples is smaller than one global batch "
                         f"({ds_cfg['train_batch_size']}); lower train.global_batch_size or add data")
    total = int(t["max_steps"] or steps_per_epoch * int(t["epochs"]))
    warmup = int(t["warmup_steps"] if t["warmup_steps"] is not None else round(total * float(t["warmup_ratio"])))

    offload = ds_cfg.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") != "none"
    opt_kw = dict(lr=float(t["lr"]), betas=tuple(t["betas"]), eps=float(t["eps"]))
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        def make_opt(groups):
            return DeepSpeedCPUAdam(groups, adamw_mode=True, **opt_kw)
    else:
        def make_opt(groups):
            return torch.optim.AdamW(groups, **opt_kw)
    schedule = warmup_cosine(warmup, total, float(t["min_lr_ratio"]))
    engine, _, _, scheduler = deepspeed.initialize(
        model=TokenLoss(model, tokenizer, float(t["ctc_weight"])),
        model_parameters=param_groups(model, float(t["weight_decay"])), optimizer=make_opt,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule), config=ds_cfg)
    return Run(cfg, stage, out, model, tokenizer, engine, scheduler, dataset, rank, world,
               ds_cfg["train_micro_batch_size_per_gpu"], ds_cfg["gradient_accumulation_steps"], total,
               steps_per_epoch, warmup, sum(p.numel() for p in model.parameters()),
               sum(p.numel() for p in model.parameters() if p.requires_grad))


def restore(run: Run, resume: str | None) -> None:
    """Weights, optimizer, schedule, counters and RNG from a checkpoint (`auto`: the newest complete one); then the
    run dir's config.yaml and the start line of the log."""
    cfg, t, rank = run.cfg, run.cfg["train"], run.rank
    ckpt, state = None, {}
    if resume:
        ckpt = latest_checkpoint(run.ckpt_root) if resume == "auto" else Path(resume)
        if resume != "auto" and not (ckpt / "trainer_state.json").is_file():
            raise FileNotFoundError(f"{ckpt}: not a complete checkpoint (no trainer_state.json)")
    if ckpt is not None:
        run.engine.load_checkpoint(str(ckpt), tag="deepspeed", load_optimizer_states=True,
                                   load_lr_scheduler_states=True)
        state = json.loads((ckpt / "trainer_state.json").read_text())
        run.step, run.skipped_total = state["step"], state["skipped_total"]
        run.samples_total, run.tokens_total = state["samples_total"], state["tokens_total"]
        run.last_save = run.step
        rng = ckpt / "rng" / f"rank{rank}.pt"
        if rng.is_file():
            set_rng_state(torch.load(rng, weights_only=True))
        else:  # more ranks than the checkpoint had: a fresh, distinct stream (the warning below says so)
            torch.manual_seed(int(t["seed"]) + 1_000_003 * (rank + 1) + run.step)
    if rank != 0:
        return
    if ckpt is not None:
        if state.get("world_size") != run.world:
            log.warning("resuming a %d-rank checkpoint on %d ranks: the data order continues, the RNG streams differ",
                        state.get("world_size"), run.world)
        changed = _config_changes(run.out / "config.yaml", {"stage": run.stage, **cfg})
        if changed:
            log.warning("config changed since the checkpoint (the run will not repeat the uninterrupted one): %s",
                        ", ".join(changed))
    (run.out / "config.yaml").write_text(yaml.safe_dump({"stage": run.stage, **cfg}, sort_keys=False))
    for stale in run.ckpt_root.glob(".tmp-step-*") if run.ckpt_root.is_dir() else []:
        shutil.rmtree(stale, ignore_errors=True)  # half-written by a killed run: never used
    log.info("%s stage %s: %s parameters trained (%s frozen), %d ranks x micro %d x accum %d = %d/step, "
             "%d steps (%d/epoch), warmup %d, lr %g, ds %s", "resumed" if ckpt else "start", run.stage,
             f"{run.n_train:,}", cfg["freeze"] or "nothing", run.world, run.micro, run.accum,
             run.micro * run.accum * run.world, run.total, run.steps_per_epoch, run.warmup, t["lr"], t["deepspeed"])
    if ckpt:
        log.info("resumed from %s at step %d", ckpt, run.step)


def step(run: Run, micro_batches: list[dict[str, Any]], t_prev: float) -> dict[str, Any]:
    """One optimizer step over the global batch; returns its metrics row (and counts it into the run). Its speed
    is measured from `t_prev`, the end of the previous step (data loading included)."""
    engine, dist, world = run.engine, _dist(), run.world
    # global counts first: the loss is normalised by the supervised tokens of the WHOLE global batch
    local = torch.tensor([sum(int((b["labels"][:, 1:] != -100).sum()) if b["num_samples"] else 0 for b in micro_batches),
                          sum(b.get("num_tokens", 0) for b in micro_batches),
                          sum(b["num_samples"] for b in micro_batches),
                          sum(len(b["skipped"]) for b in micro_batches)], dtype=torch.float64, device=engine.device)
    dist.all_reduce(local)  # on the engine's device: NCCL reduces GPU tensors only
    n_sup, n_tok, n_samples, n_skip = (int(x) for x in local.tolist())
    if n_skip:
        gathered = [None] * world
        dist.all_gather_object(gathered, [s for b in micro_batches for s in b["skipped"]])
        if run.rank == 0:
            for origin, reason in (s for g in gathered for s in g):
                log.warning("skipped sample %s: %s", origin, reason)
    norm = max(n_sup, 1) / (run.accum * world)  # DeepSpeed divides by accum and averages over ranks
    lr = float(run.scheduler.get_last_lr()[0])
    plain_grads = engine.zero_optimization_stage() == 0 and run.cfg["train"]["precision"] == "fp32"
    loss_sum, ctc_sum, grad_norm = torch.zeros((), dtype=torch.float64, device=engine.device), 0.0, None
    for a, b in enumerate(micro_batches):
        ce = engine(**_to(b if b["num_samples"] else _dummy_batch(run.model.config), engine.device))
        ctc_sum += engine.module.last_ctc
        engine.backward(ce / norm)
        if a == run.accum - 1 and plain_grads:  # ZeRO-0 fp32 does not report the norm: measure it before the step
            grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in run.model.parameters()
                                                             if p.grad is not None]))
        engine.step()
        loss_sum += ce.detach().double()
    dist.all_reduce(loss_sum)
    run.step += 1
    run.skipped_total += n_skip
    run.samples_total += n_samples
    run.tokens_total += n_tok
    dt = max(1e-9, time.perf_counter() - t_prev)
    if grad_norm is None:
        grad_norm = engine.get_global_grad_norm()
    row = {"step": run.step, "epoch": (run.step - 1) // run.steps_per_epoch, "loss": float(loss_sum) / max(n_sup, 1),
           "lr": lr, "grad_norm": None if grad_norm is None else float(grad_norm),
           "samples": n_samples, "samples_per_s": n_samples / dt, "tokens_per_s": n_tok / dt,
           "skipped": n_skip, "skipped_total": run.skipped_total, "time": time.time()}
    if engine.module.use_ctc:  # this rank's CTC term per sample (it is part of `loss` too)
        row["ctc"] = ctc_sum / max(1, sum(b["num_samples"] for b in micro_batches))
    return row


def check_skips(run: Run) -> None:
    """A run that trains on nothing must not report success: from step `train.skip_check_steps` on (and at the last
    step of a shorter run), stop when every sample so far was skipped or more than `train.max_skip_ratio` were."""
    t = run.cfg["train"]
    seen = run.samples_total + run.skipped_total
    if run.step < min(int(t["skip_check_steps"]), run.total):
        return
    if seen and (run.samples_total == 0 or run.skipped_total / seen > float(t["max_skip_ratio"])):
        raise ValueError(f"{run.skipped_total} of {seen} samples skipped in {run.step} steps (unreadable images, "
                         f"prompts over data.max_length, records without an answer; train.log names each): "
                         f"stopped, nothing useful would be trained")


def finish(run: Run, runlog: "RunLog") -> Path:
    """Every rank must hold the same weights: say so in the log and in summary.json; the final checkpoint dir."""
    dist = _dist()
    prints = [None] * run.world
    dist.all_gather_object(prints, _fingerprint(run.engine, run.model))
    final = run.ckpt_root / f"step-{run.last_save:08d}"
    runlog.close()
    if run.rank == 0:
        same = all(p == prints[0] for p in prints)
        summary = {"stage": run.stage, "steps": run.step, "final_checkpoint": str(final), "model": str(final / "model"),
                   "params": run.n_params, "params_trained": run.n_train, "skipped_total": run.skipped_total,
                   "samples_total": run.samples_total, "tokens_total": run.tokens_total, "world_size": run.world,
                   "rank_fingerprints": prints, "ranks_identical": same}
        (run.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("done: %d steps, %d samples, %d bad samples skipped; weights identical on all %d ranks: %s; "
                 "inference-ready model: %s", run.step, run.samples_total, run.skipped_total, run.world, same,
                 final / "model")
        print(f"[got train] done: {run.step} steps, {run.skipped_total} bad samples skipped (see "
              f"{run.out / 'train.log'}); model: {final / 'model'}", file=sys.stderr)
    dist.barrier()
    return final


def train(cfg: dict[str, Any], stage: str, resume: str | None = None) -> Path:
    """Run one training job: build, restore, step until done (checkpointing), finish; the final checkpoint dir."""
    from got.data import Collator, StepSampler

    run = build(cfg, stage)
    restore(run, resume)
    d, o, seed = cfg["data"], cfg["output"], int(cfg["train"]["seed"])
    sampler = StepSampler(len(run.dataset), run.micro, run.accum, run.world, run.rank, seed, start_step=run.step,
                          total_steps=run.total)
    loader = torch.utils.data.DataLoader(
        run.dataset, batch_sampler=sampler,
        collate_fn=Collator(run.tokenizer.endoftext_id, int(d["max_length"]), bool(d["packing"])),
        num_workers=int(d["num_workers"]), prefetch_factor=4 if d["num_workers"] else None,
        generator=torch.Generator().manual_seed(seed))  # its own generator: the global RNG stays the resumed one
    batches = iter(loader)
    runlog = RunLog(run.out, run.rank, run.total, run.step)
    run.engine.train()
    t_prev = time.perf_counter()
    try:
        while run.step < run.total:
            row = step(run, [next(batches) for _ in range(run.accum)], t_prev)
            t_prev = time.perf_counter()
            runlog.step(row, write=run.step % int(o["log_every"]) == 0 or run.step == run.total)
            check_skips(run)
            _fault("step", run.step)
            if run.step % int(o["save_every"]) == 0 or run.step == run.total:
                path = save_checkpoint(run.engine, run.model, run.tokenizer, run.ckpt_root, run.step,
                                       run.state(row["loss"]), run.rank, int(o["keep_last"]))
                run.last_save = run.step
                if run.rank == 0:
                    log.info("step %d: loss %.4f, checkpoint %s (skipped so far: %d)", run.step, row["loss"], path,
                             run.skipped_total)
    except ValueError:
        runlog.close()  # the bar ends its line, so the error that follows stands on its own
        raise
    return finish(run, runlog)


# ---- CLI -----------------------------------------------------------------------------------------------------------


def _cpu_accelerator() -> None:
    """Without CUDA, DeepSpeed must be told to use its CPU accelerator before it is first imported.

    That accelerator loads a JIT-built op under a file lock on every start; a start killed while holding the lock
    leaves it behind and every later start would wait on it forever, so an old lock is an error that names it."""
    if torch.cuda.is_available():
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from torch.utils.cpp_extension import _get_build_directory

    from got.kernels import stale_build_lock

    if lock := stale_build_lock(Path(_get_build_directory("deepspeed_shm_comm", False))):
        raise FileExistsError(f"{lock}: a stale build lock left by a killed run (10+ minutes old); DeepSpeed would "
                           "wait on it forever: delete it (scripts/setup.sh does) and start again")


def add_cli(p: argparse.ArgumentParser) -> None:
    from stages import RECIPES

    p.add_argument("--stage", required=True, choices=list(RECIPES), help="which recipe (stages/): "
                   + ", ".join(RECIPES))
    p.add_argument("--config", help="training YAML (default: configs/stage<N>.yaml or configs/finetune.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=2e-5")
    p.add_argument("--resume", metavar="auto|PATH", help="'auto': the newest complete checkpoint in the output dir")
    p.add_argument("--from", dest="init_from", metavar="PATH", help="start from this GOT checkpoint (model.init_from)")
    p.add_argument("--data", action="append", metavar="JSON", help="train on this GOT/ms-swift json (repeatable)")
    p.add_argument("--image-root", help="folder the --data image paths are relative to (default: the json's)")
    p.add_argument("--output", help="output dir (output.dir)")


def cli_main(args: argparse.Namespace) -> int:
    from stages import RECIPES

    from got.checks import MAX_TILES, check_numbers, check_output

    config = args.config or RECIPES[args.stage][1]
    overrides = list(args.overrides)
    if args.init_from:
        overrides.append(f"model.init_from={json.dumps(args.init_from)}")
    if args.output:
        overrides.append(f"output.dir={json.dumps(args.output)}")
    for path in args.data or []:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--data {path}: {'is a folder, not a' if Path(path).is_dir() else 'no such'} "
                                    "data file")
    cfg = load_train_config(config, overrides)
    # every number in range and the output folder writable, before any model is built (not an hour later)
    whole = {"integer": True}
    check_numbers(cfg, {
        "train.lr": {"above": 0}, "train.epochs": {**whole, "minimum": 1},
        "train.max_steps": {**whole, "minimum": 1, "optional": True},
        "train.global_batch_size": {**whole, "minimum": 1}, "train.micro_batch_size": {**whole, "minimum": 1},
        "train.min_lr_ratio": {"minimum": 0, "maximum": 1}, "train.warmup_ratio": {"minimum": 0, "maximum": 1},
        "train.warmup_steps": {**whole, "minimum": 0, "optional": True}, "train.weight_decay": {"minimum": 0},
        "train.betas": {"minimum": 0, "maximum": 1, "each": True}, "train.eps": {"above": 0},
        "train.grad_clip": {"minimum": 0}, "train.ctc_weight": {"minimum": 0},
        "data.max_length": {**whole, "minimum": 1}, "data.max_tiles": {**whole, "minimum": 1, "maximum": MAX_TILES},
        "data.num_workers": {**whole, "minimum": 0}, "data.samples_per_epoch": {**whole, "minimum": 1, "optional": True},
        "output.save_every": {**whole, "minimum": 1}, "output.keep_last": {**whole, "minimum": 0},
        "output.log_every": {**whole, "minimum": 1},
        "model.lora.r": {**whole, "minimum": 0}, "model.lora.dropout": {"minimum": 0, "maximum": 1},
    })
    if len(cfg["train"]["betas"]) != 2:
        raise ValueError(f"config key train.betas must be two numbers [beta1, beta2], got {cfg['train']['betas']!r}")
    check_output("--output" if args.output else "output.dir", cfg["output"]["dir"], "dir")
    if args.data:
        cfg["data"]["sources"] = [{"json": p, **({"image_root": args.image_root} if args.image_root else {})}
                                  for p in args.data]
        cfg["data"]["samples_per_epoch"] = None
    train(cfg, args.stage, resume=args.resume)
    return 0
