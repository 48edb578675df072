"""The `got` command. Subcommands live next to the code they drive and are imported lazily,
so `got --help` is instant and a broken optional module cannot break the other commands.

Each module named in COMMANDS defines `add_cli(parser: argparse.ArgumentParser)` and
`cli_main(args: argparse.Namespace) -> int | None`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("got.demo", "build a preset, run one forward pass and print what happened"),
    "convert": ("got.checkpoint", "convert checkpoints between GOT / transformers got_ocr2 / this project"),
    "data": ("data_engines.cli", "render synthetic training data (`got data render --help`)"),
    "train": ("got.trainer", "train a stage (1, 2, 3) or fine-tune on your own data"),
    "chat": ("got.inference", "OCR images or PDFs with any GOT prompt mode"),
    "eval": ("got.evaluate", "score a model (and OCR-1.0 peers) on a GOT-format data set"),
    "scaling": ("got.scaling", "fit power laws E = a*X^-b to several runs"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="got", description="GOT-OCR2.0-style OCR: train, render data, chat, evaluate.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('got').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            mod = importlib.import_module(module)
            mod.add_cli(p)
            p.set_defaults(_run=mod.cli_main)
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) \
            and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra  # KEY=VALUE after an option (`got train ... --resume auto b=2`); argparse stops at it
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args._run(args) or 0)
    except (FileNotFoundError, ValueError, ImportError) as e:  # user errors: one clear line, no traceback
        print(f"got {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
