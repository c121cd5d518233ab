"""Plumbing behind ``cli.py``: lazy verb resolution, friendly flags, and errors without tracebacks.

jsonargparse builds each verb's parser from the function's signature. Two conveniences are added on top so that
the flags read like other tools': ``--skip-bad`` equals ``--skip_bad`` (dashes or underscores), a bare boolean
flag means true (``--skip-bad`` = ``--skip_bad=true``, ``--no-skip-bad`` = false), a list option takes a
comma-separated value (``--splits train,val``) as well as jsonargparse's ``[train,val]``, and the fields of an
option group (:mod:`synfer.core.options`) take their plain names too (``--seed`` = ``--run.seed``).
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

_BOOL_WORDS = {"true", "false", "yes", "no", "1", "0"}


def resolve(target: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


#: An ``Args:`` entry documenting several parameters at once: ``epochs, batch_size, lr: the schedule.``
_SHARED_ARG = re.compile(r"^(?P<indent>\s+)(?P<names>[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)+)\s*:\s?(?P<text>.*)$")


def expand_shared_args(doc: str) -> str:
    """The docstring with each ``a, b: text`` entry (and its continuation lines) repeated once per parameter, so
    that every parameter gets its help text (the docstring parser reads one name per entry)."""
    lines, out, i = doc.splitlines(), [], 0
    while i < len(lines):
        m = _SHARED_ARG.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent = len(m["indent"])
        j = i + 1
        while j < len(lines) and lines[j].strip() and len(lines[j]) - len(lines[j].lstrip()) > indent:
            j += 1
        names = [n.strip() for n in m["names"].split(",")]
        for name in names:
            out += [f"{m['indent']}{name}: {m['text']}", *lines[i + 1:j]]
        i = j
    return "\n".join(out)


def cli_function(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as the CLI shows it: the same function with :func:`expand_shared_args` applied to its docstring."""
    if not fn.__doc__ or not any(_SHARED_ARG.match(line) for line in fn.__doc__.splitlines()):
        return fn
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__, copy.__annotations__ = fn.__kwdefaults__, fn.__annotations__
    copy.__module__, copy.__qualname__ = fn.__module__, fn.__qualname__
    copy.__doc__ = expand_shared_args(fn.__doc__)
    return copy


def _param_kinds(fn: Callable[..., Any]) -> tuple[set[str], set[str], list[str]]:
    """The boolean and the list-typed parameters of ``fn`` (an option group's fields as ``group.field``), and its
    required (positional) parameters in order."""
    import dataclasses
    import inspect

    from .core.options import option_groups

    hints = {k: v for k, v in typing.get_type_hints(fn).items() if k != "return"}
    for group, cls in option_groups(fn).items():
        hints.update({f"{group}.{k}": v for k, v in typing.get_type_hints(cls).items()
                      if k in {f.name for f in dataclasses.fields(cls)}})
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
    """Rewrite friendly flags into jsonargparse's spelling (see module docstring).

    Required parameters are positional for jsonargparse; they may also be given as options (``--annotators X``),
    and a list-typed one takes several plain values (``synfer merge A B OUT``): the output puts them in order.
    A field of an option group may be spelled plainly (``--seed 1`` for ``--run.seed 1``).
    """
    from .core.options import flat_aliases

    bools, lists, required = _param_kinds(fn)
    aliases = flat_aliases(fn)
    options: list[str] = []
    plain: list[str] = []  # positional tokens, in order
    named: dict[str, str] = {}  # required parameters given as options
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--") or tok == "--":
            plain.append(tok)
            i += 1
            continue
        key, eq, value = tok[2:].partition("=")
        key = key.replace("-", "_")
        if key.startswith("no_") and key[3:] in aliases:
            key = "no_" + aliases[key[3:]]
        key = aliases.get(key, key)
        if not eq and key.startswith("no_") and key[3:] in bools:
            options.append(f"--{key[3:]}=false")
        elif key in bools and not eq:
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is not None and nxt.lower() in _BOOL_WORDS:
                options += [f"--{key}", nxt]
                i += 1
            else:
                options.append(f"--{key}=true")
        elif key in ("help", "print_config", "config"):
            options.append(f"--{key}{eq}{value}")  # jsonargparse's own options (it spells them with underscores)
            if key == "config" and not eq and i + 1 < len(args):
                options.append(args[i + 1])
                i += 1
        else:
            if not eq and i + 1 < len(args):  # every other option takes one value
                value = args[i + 1]
                i += 1
            if key in required and key not in bools:
                named[key] = value
            else:
                options.append(f"--{key}={_as_list(value) if key in lists else value}")
        i += 1
    return _positionals(plain, named, required, lists) + options


def _positionals(plain: list[str], named: dict[str, str], required: list[str], lists: set[str]) -> list[str]:
    """The required parameters' values in order: those given by name, the others filled from ``plain`` (a list
    parameter takes the surplus of plain values, so ``A B OUT`` gives ``[A,B] OUT``)."""
    slots = [n for n in required if n not in named]
    surplus = len(plain) - len(slots)
    out, k = [], 0
    for name in required:
        if name in named:
            out.append(_as_list(named[name]) if name in lists else named[name])
        elif k < len(plain):
            take = 1 + surplus if name in lists and surplus > 0 else 1
            values, k = plain[k:k + take], k + take
            surplus -= take - 1
            out.append(_as_list(",".join(values)) if name in lists else values[0])
    return out + plain[k:]  # extras: the parser names them


def _first_doc_line(target: str) -> str:
    try:
        doc = resolve(target).__doc__ or ""
    except Exception as e:  # a verb whose optional dependency is missing still shows up in the listing
        return f"(unavailable: {type(e).__name__}: {e})"
    return doc.strip().splitlines()[0] if doc.strip() else ""


def print_usage(commands: dict[str, str], file: Any = None) -> None:
    from . import __version__

    file = file or sys.stdout
    print(f"synfer {__version__}: synthetic facial-expression datasets with text and FACS action-unit control.\n",
          file=file)
    print("usage: synfer VERB [options] [--debug]   (synfer VERB --help for a verb's options)\n\nverbs:", file=file)
    width = max(map(len, commands))
    for verb, target in commands.items():
        print(f"  {verb:<{width}}  {_first_doc_line(target)}", file=file)


def _one_line(error: BaseException) -> str:
    """The error's message on one line (KeyError's repr quotes stripped; OSError's file name kept)."""
    if isinstance(error, KeyError) and error.args:
        text = f"missing key {error.args[0]!r}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def _report(result: Any) -> None:
    if result is None or os.environ.get("RANK", "0") != "0":  # one report per sharded job (torchrun sets RANK)
        return
    if isinstance(result, Path):
        print(f"wrote {result}")
    elif isinstance(result, list) and result and all(isinstance(r, Path) for r in result):
        print(f"wrote {len(result)} files under {result[0].parent}")
    else:
        print(result)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that say what the user has to fix (bad input, files, options), printed as one line."""
    from PIL import Image

    from .core.dataset import DatasetError

    # ImportError: a missing optional package, whose message says what to install
    errors: list[type[BaseException]] = [DatasetError, ValueError, TypeError, KeyError, OSError, ImportError,
                                         Image.DecompressionBombError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # older safetensors: its errors are OSError / ValueError, caught above
        pass
    return tuple(errors)


def run(commands: dict[str, str], argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the chosen verb, return the exit code.

    Errors that are the user's to fix (bad input, mismatched orders, missing or unreadable files, a full disk)
    print one message naming the problem and exit with 2; anything else prints one line saying it is a bug and
    exits with 1. ``--debug`` (anywhere on the line) or ``SYNFER_DEBUG=1`` shows the traceback instead.
    """
    from jsonargparse import auto_cli

    from . import __version__

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("SYNFER_DEBUG"))
    argv = [a for a in argv if a != "--debug"]
    if not argv:
        print_usage(commands, file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
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
    fn = cli_function(resolve(commands[verb]))
    try:
        result = auto_cli(fn, args=normalise_args(argv[1:], fn), prog=f"synfer {verb}")
    except KeyboardInterrupt:
        print(f"\nsynfer {verb}: interrupted (verbs that take --resume continue where they stopped).", file=sys.stderr)
        return 130
    except _user_errors() as e:
        if debug:
            raise
        print(f"synfer {verb}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        if debug:
            raise
        print(f"synfer {verb}: unexpected error ({type(e).__name__}: {_one_line(e)}); this is a bug in synfer, "
              "please report it with the output of the same command run with --debug.", file=sys.stderr)
        return 1
    _report(result)
    return 0
