"""The `got` command. Subcommands live next to the code they drive and are imported lazily,
so `got --help` is instant and a broken optional module cannot break the other commands.

Each module named in COMMANDS defines `add_cli(parser: argparse.ArgumentParser)` and
`cli_main(args: argparse.Namespace) -> int | None`.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys

from got.checks import one_line, printable

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("got.demo", "build a preset, run one forward pass and print what happened"),
    "convert": ("got.checkpoint", "convert checkpoints between GOT / transformers got_ocr2 / this project"),
    "data": ("data_engines.cli", "render synthetic training data (`got data render --help`)"),
    "train": ("got.trainer", "train a stage (1, 2, 3) or fine-tune on your own data"),
    "chat": ("got.inference", "OCR images or PDFs with any GOT prompt mode"),
    "serve": ("got.serve", "serve a model over HTTP: a page to try it, GOT's API and OpenAI chat completions"),
    "eval": ("got.evaluate", "score a model (and OCR-1.0 peers) on a GOT-format data set"),
    "scaling": ("got.scaling", "fit power laws E = a*X^-b to several runs"),
}


NEGATIVE_VALUE = re.compile(r"-(\d|\.\d|inf\b|nan\b)", re.IGNORECASE)  # -10,-10,50,50  -1e9  -.5  -3 (pages)


def _value_options(parser: argparse.ArgumentParser) -> set[str]:
    """The --long options that take a value, in `parser` and the subcommand parsers it holds."""
    out: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _value_options(sub)
        elif action.nargs != 0:
            out.update(s for s in action.option_strings if s.startswith("--"))
    return out


def _join_negative_values(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`--box -10,-10,50,50` -> `--box=-10,-10,50,50`: argparse reads a value starting with '-' (other than a plain
    negative number) as the next option and fails with "expected one argument"; joined, it is the option's value,
    which the command then checks like any other (and names the real problem: a box outside the image)."""
    takes_value = _value_options(parser)
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out += argv[i:]
            break
        if arg in takes_value and i + 1 < len(argv) and NEGATIVE_VALUE.match(argv[i + 1]):
            out.append(f"{arg}={argv[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
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
    args, extra = parser.parse_known_args(_join_negative_values(argv, parser))
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
        print(f"got {args.command}: error: {one_line(str(e))}", file=sys.stderr)
        return 1
    except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as e:
        # an output the up-front checks (got.checks.check_output) could not foresee: still one line
        where = printable(str(e.filename)) + ": " if e.filename else ""
        print(f"got {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
