"""The project's own CPU kernels (got/csrc), built once per machine by torch's extension builder and loaded as torch
ops. Each has a torch fallback with the same meaning: without a C++ compiler or AVX-512 the same step runs as torch
ops (one log line says so).

- `got_cpu::decode_attend`: the one-query attention of a decode step (got/decode.py; figures: docs/benchmarks.md).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)
NAME = "got_cpu_kernels"
SOURCES = [Path(__file__).parent / "csrc" / "decode_attend.cpp"]


def stale_build_lock(build: Path) -> Path | None:
    """The lock in a torch extension's build directory if a build killed midway left it (10+ minutes old): every
    later load of that extension would wait on it forever."""
    lock = build / "lock"
    return lock if lock.is_file() and time.time() - lock.stat().st_mtime > 600 else None


def build_directory() -> Path:
    """Where this checkout's kernels build: one directory per source folder, so two checkouts (or an installed wheel
    and a checkout) never rebuild over each other; within one, the build follows the sources' times, as ninja does."""
    from torch.utils.cpp_extension import _get_build_directory

    key = hashlib.sha256(str(SOURCES[0].parent.resolve()).encode()).hexdigest()[:10]
    return Path(_get_build_directory(f"{NAME}-{key}", False))


@functools.cache
def cpu_kernels() -> bool:
    """Load the CPU kernels, building them first if this machine has not (about 25 s, once: the build is cached
    under TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions). False where they cannot be built or run."""
    try:
        from torch.utils.cpp_extension import load

        build = build_directory()
        if lock := stale_build_lock(build):
            lock.unlink(missing_ok=True)
        if (build / "lock").is_file():  # a build under way elsewhere, or one killed less than 10 minutes ago
            print(f"[got] waiting for another process's build of the CPU decode kernels; if none is running, delete "
                  f"{build / 'lock'}", file=sys.stderr, flush=True)
        built = build / f"{NAME}.so"
        if not built.is_file() or any(s.stat().st_mtime > built.stat().st_mtime for s in SOURCES):
            print(f"[got] building the CPU decode kernels once (~25 s) in {build}", file=sys.stderr, flush=True)
        module = load(NAME, [str(s) for s in SOURCES], extra_cflags=["-O3"], build_directory=str(build),
                      verbose=False)
    except Exception as e:  # no compiler, no headers, a failed build: the torch ops do the same work
        log.warning("got: CPU decode kernels unavailable (%s); decoding uses torch ops",
                    str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
        return False
    if not module.available():
        log.info("got: this CPU has no AVX-512; decoding uses torch ops")
        return False
    torch.library.register_fake("got_cpu::decode_attend")(  # shapes for torch.compile's tracing
        lambda q, key, value, mask, scale: torch.empty_like(q, memory_format=torch.contiguous_format))
    return True
