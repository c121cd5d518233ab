"""Plumbing behind ``cli.py``: lazy verb resolution, friendly flags, and errors without tracebacks.

jsonargparse builds each verb's parser from the function's signature. Two conveniences are added on top so that
the flags read like other tools': ``--skip-bad`` equals ``--skip_bad`` (dashes or underscores), a bare boolean
flag means true (``--skip-bad`` = ``--skip_bad=true``, ``--no-skip-bad`` = false), and a list option takes a
comma-separated value (``--splits train,val``) as well as jsonargparse's ``[train,val]``.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

_BOOL_WORDS = {"true", "false", "yes", "no", "1", "0"}


def resolve(target: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _param_kinds(fn: Callable[..., Any]) -> tuple[set[str], set[str], list[str]]:
    """The boolean and the list-typed parameters of ``fn``, and its required (positional) parameters in order."""
    import inspect

    hints = typing.get_type_hints(fn)
    bools, lists = set(), set()
    for name, hint in hints.items():
        if hint is bool:
            bools.add(name)
        # list[X] itself, or list[X] | None
        options = (hint, *typing.get_args(hint)) if typing.get_origin(hint) not in (list, tuple) else (hint,)
        if any(typing.get_origin(a) in (list, tuple) for a in options):
            lists.add(name)
    required = [n for n, p in inspect.signature(fn).parameters.items() if p.default is inspect.Parameter.empty]
    return bools, lists, required


def _as_list(value: str) -> str:
    """``a,b`` -> ``[a,b]``; values already in jsonargparse's list form (or null) are kept."""
    if value and not value.startswith("[") and value.lower() not in ("null", "none"):
        return "[" + value + "]"
    return value


def normalise_args(args: list[str], fn: Callable[..., Any]) -> list[str]:
    """Rewrite friendly flags into jsonargparse's spelling (see module docstring)."""
    bools, lists, required = _param_kinds(fn)
    out: list[str] = []
    positional = 0
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--") or tok == "--":
            # a positional argument: the next required parameter
            name = required[positional] if positional < len(required) else None
            out.append(_as_list(tok) if name in lists else tok)
            positional += 1
            i += 1
            continue
        key, eq, value = tok[2:].partition("=")
        key = key.replace("-", "_")
        if not eq and key.startswith("no_") and key[3:] in bools:
            out.append(f"--{key[3:]}=false")
        elif key in bools and not eq:
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is not None and nxt.lower() in _BOOL_WORDS:
                out += [f"--{key}", nxt]
                i += 1
            else:
                out.append(f"--{key}=true")
        elif key in ("help", "print_config", "config") or key.startswith("print_config"):
            out.append(tok)  # jsonargparse's own options, kept as written
            if key == "config" and not eq and i + 1 < len(args):
                out.append(args[i + 1])
                i += 1
        else:
            if not eq and i + 1 < len(args):  # every other option takes one value
                value = args[i + 1]
                i += 1
            out.append(f"--{key}={_as_list(value) if key in lists else value}")
        i += 1
    return out


def _first_doc_line(target: str) -> str:
    try:
        doc = resolve(target).__doc__ or ""
    except Exception as e:  # a verb whose optional dependency is missing still shows up in the listing
        return f"(unavailable: {type(e).__name__}: {e})"
    return doc.strip().splitlines()[0] if doc.strip() else ""


def print_usage(commands: dict[str, str]) -> None:
    from . import __version__

    print(f"synfer {__version__}: synthetic facial-expression datasets with text and FACS action-unit control.\n")
    print("usage: synfer VERB [options]      (synfer VERB --help for a verb's options)\n\nverbs:")
    width = max(map(len, commands))
    for verb, target in commands.items():
        print(f"  {verb:<{width}}  {_first_doc_line(target)}")


def _report(result: Any) -> None:
    if result is None or os.environ.get("RANK", "0") != "0":  # one report per sharded job (torchrun sets RANK)
        return
    if isinstance(result, Path):
        print(f"wrote {result}")
    elif isinstance(result, list) and result and all(isinstance(r, Path) for r in result):
        print(f"wrote {len(result)} files under {result[0].parent}")
    else:
        print(result)


def run(commands: dict[str, str], argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the chosen verb, return the exit code.

    Errors that are the user's to fix (bad input, mismatched orders, missing files) print one message naming
    the problem and exit with 2; set ``SYNFER_DEBUG=1`` to see the traceback instead.
    """
    from jsonargparse import auto_cli

    from . import __version__
    from .core.dataset import DatasetError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print_usage(commands)
        return 0
    if argv[0] == "--version":
        print(f"synfer {__version__}")
        return 0
    verb = argv[0]
    if verb not in commands:
        close = difflib.get_close_matches(verb, list(commands), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        print(f"synfer: unknown verb {verb!r}.{hint} Run `synfer --help` for the list.", file=sys.stderr)
        return 2
    fn = resolve(commands[verb])
    try:
        result = auto_cli(fn, args=normalise_args(argv[1:], fn), prog=f"synfer {verb}")
    except (DatasetError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as e:
        if os.environ.get("SYNFER_DEBUG"):
            raise
        print(f"synfer {verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nsynfer {verb}: interrupted (verbs that take --resume continue where they stopped).", file=sys.stderr)
        return 130
    _report(result)
    return 0
