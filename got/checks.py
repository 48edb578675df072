"""Argument checks shared by every `got` command, so a bad value is refused the same way everywhere: before any
work starts, as ONE ValueError naming the option (or config key) and the problem, which `got.cli.main` prints as
one line with exit 1.

    parse_int("--batch-size", "0", minimum=1)           # ValueError: --batch-size must be >= 1, got '0'
    parse_float("--max-shard-gb", "-1", above=0)        # ValueError: --max-shard-gb must be > 0, got '-1'
    check_output("--to", "model.safetensors", "dir")    # ValueError: --to model.safetensors: is a file, not a folder
    check_device("--device", "tpu7")                    # ValueError: --device 'tpu7': not a device ...
    check_numbers(cfg, {"train.lr": {"above": 0}})      # ValueError: config key train.lr must be > 0, got -1.0
    printable(os.fsdecode(b"scan\\xff.png"))            # 'scan\\\\xff.png': valid UTF-8, for JSON lines and HTML
"""
from __future__ import annotations

import decimal
import math
import os
import tempfile
from pathlib import Path
from typing import Any

_INT64 = 2**63
_ABSENT = object()
# ranges of the numeric options `got chat` and `got eval` share
MAX_BATCH_SIZE = 4096
MAX_TILES = 64  # GOT uses 6; the tile-grid search is quadratic in it
MAX_NEW_TOKENS = 1 << 20


def parse_int(option: str, value: Any, minimum: int = -_INT64, maximum: int = _INT64 - 1) -> int:
    """The one integer check: "1000", "1e6", "1_000" -> int, exactly (no float rounding); anything else (not a
    number, not finite, not whole, out of [minimum, maximum]) -> ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{option} must be an integer, got {value!r}")
    try:
        d = decimal.Decimal(value if isinstance(value, int) else value.strip())
    except decimal.InvalidOperation:
        raise ValueError(f"{option} must be an integer, got {value!r}") from None
    if not d.is_finite():
        raise ValueError(f"{option} must be a finite integer, got {value!r}")
    if d < minimum:  # compared as decimals first: int("1e999999999") alone would take minutes
        raise ValueError(f"{option} must be >= {minimum}, got {value!r}")
    if d > maximum:
        raise ValueError(f"{option} must be <= {maximum}, got {value!r}")
    if d != d.to_integral_value():
        raise ValueError(f"{option} must be a whole number, got {value!r}")
    return int(d)


def parse_float(option: str, value: Any, minimum: float | None = None, maximum: float | None = None,
                above: float | None = None) -> float:
    """The one real-number check: a finite float in [minimum, maximum] (and > above) -> float; anything else
    (not a number, NaN, infinity, out of range) -> ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{option} must be a number, got {value!r}")
    try:
        x = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        raise ValueError(f"{option} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{option} must be a finite number, got {value!r}")
    if above is not None and not x > above:
        raise ValueError(f"{option} must be > {above:g}, got {value!r}")
    if minimum is not None and x < minimum:
        raise ValueError(f"{option} must be >= {minimum:g}, got {value!r}")
    if maximum is not None and x > maximum:
        raise ValueError(f"{option} must be <= {maximum:g}, got {value!r}")
    return x


def check_numbers(cfg: dict, ranges: dict[str, dict[str, Any]], what: str = "config key") -> None:
    """Range checks of numbers inside a nested config, each named by its dotted key:
    {"train.lr": {"above": 0}, "train.max_steps": {"minimum": 1, "integer": True, "optional": True},
    "train.betas": {"minimum": 0, "maximum": 1, "each": True}}. `optional`: None passes; `each`: every item of a
    list; the other keys go to parse_int (integer) or parse_float."""
    for key, spec in ranges.items():
        value: Any = cfg
        for part in key.split("."):
            value = value.get(part, _ABSENT) if isinstance(value, dict) else _ABSENT
        if value is _ABSENT:  # not in this config: the schema, not this check, decides which keys exist
            continue
        spec = dict(spec)
        optional, each, integer = spec.pop("optional", False), spec.pop("each", False), spec.pop("integer", False)
        if value is None and optional:
            continue
        if each and not isinstance(value, (list, tuple)):
            raise ValueError(f"{what} {key} must be a list of numbers, got {value!r}")
        for v in (value if each else [value]):
            if integer:
                parse_int(f"{what} {key}", repr(v) if isinstance(v, float) else v, **spec)  # 2.0 ok, 1.5 not whole
            else:
                parse_float(f"{what} {key}", v, **spec)


def check_output(option: str, path: str | os.PathLike, kind: str = "dir", create: bool = False) -> Path:
    """The one output check, before any work: `path` must be (or can become) a writable folder (kind "dir") or
    file (kind "file"). An existing file where a folder is needed, a folder where a file is needed, a parent that
    is a file, or no write permission -> ValueError "OPTION PATH: problem". Nothing is left behind unless
    `create` (a "dir" is then made, parents included)."""
    if kind not in ("dir", "file"):
        raise ValueError(f"kind must be 'dir' or 'file', not {kind!r}")
    path = Path(path)
    shown = printable(str(path))
    if kind == "dir" and path.exists() and not path.is_dir():
        raise ValueError(f"{option} {shown}: is a file, not a folder")
    if kind == "file" and path.is_dir():
        raise ValueError(f"{option} {shown}: is a folder; give a file name")
    base = path if kind == "dir" else path.parent
    existing = base
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ValueError(f"{option} {shown}: {printable(str(existing))} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".got-write-check-", dir=existing)  # what os.access cannot say (root, ro fs)
        os.rmdir(probe)
        if kind == "file" and path.exists():
            with open(path, "ab"):  # opened for appending, nothing written
                pass
    except OSError as e:
        raise ValueError(f"{option} {shown}: not writable ({e.strerror or e})") from None
    if create and kind == "dir":
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"{option} {shown}: cannot create the folder ({e.strerror or e})") from None
    return path


def check_device(option: str, value: str | None) -> str | None:
    """`--device` as torch will take it, or one line saying why not: an unknown device type, CUDA asked for where
    there is none (or not that many), MPS where it is unavailable. None (auto) passes through."""
    if value is None:
        return None
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{option} {value!r}: not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return value
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"{option} {value}: {why}; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{option} {value}: there {'is' if count == 1 else 'are'} only {count} CUDA "
                             f"device{'s' if count != 1 else ''} (cuda:0{f'..cuda:{count - 1}' if count > 1 else ''})")
        return value
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{option} {value}: MPS (Apple GPU) is not available here; use --device cpu")
        return value
    backend = getattr(torch, device.type, None)
    if device.type != "meta" and backend is not None and getattr(backend, "is_available", lambda: False)():
        return value
    raise ValueError(f"{option} {value}: {device.type} devices are not available here; use cpu or cuda")


def one_line(message: str) -> str:
    """A message as one printable line: a library's multi-line text (a YAML parser's pointer to the column, say)
    joined with '; ', names that are not UTF-8 escaped."""
    return printable("; ".join(part.strip() for part in str(message).splitlines() if part.strip()))


def printable(name: str) -> str:
    """A name from the command line or the file system as valid UTF-8 text: bytes that are not UTF-8 (kept by
    Python as lone surrogates) become backslash escapes, so JSON lines, HTML and messages can always be written."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:
        return os.fsencode(name).decode("utf-8", "backslashreplace")  # b"\xff" -> "\\xff"
    except UnicodeError:  # a surrogate that no file name decoding made
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
