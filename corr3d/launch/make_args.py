"""Run a command with extra arguments taken from an environment variable, split like a shell would split words.

The Makefile's free-form variables (``ARGS``, ``PYTEST_ARGS``) hold several words, often quoted
(``ARGS="launcher.setup='[module load cuda]' seed=1"``). Written into a recipe they would be shell code: ``;``,
``|``, ``$()``, backticks and redirections would run. Instead make exports them and runs

    python -m corr3d.launch.make_args VAR COMMAND [ARG ...]

which appends ``shlex.split($VAR)`` to the command and ``exec``-s it: quotes group words as in the shell, and
nothing else is interpreted (no substitution, no globbing, no second command). The command's exit status is the
recipe's, so ``make`` fails when the command fails. Only the standard library is imported: this runs before (and
without) corr3d's dependencies.
"""
from __future__ import annotations

import os
import shlex
import sys

USAGE = "usage: python -m corr3d.launch.make_args VAR COMMAND [ARG ...]"


def command_line(var: str, command: list[str], environ=os.environ) -> list[str]:
    """``command`` + the words of ``$var`` (:class:`ValueError` for unbalanced quotes)."""
    text = environ.get(var, "")
    try:
        words = shlex.split(text, comments=False, posix=True)
    except ValueError as err:
        raise ValueError(f"{var}={text!r}: {err} (quote each word at most once, e.g. {var}=\"key='a b' k2=v\")") \
            from None
    return [*command, *words]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        print(USAGE, file=sys.stderr)
        return 2
    var, command = argv[0], argv[1:]
    try:
        full = command_line(var, command)
    except ValueError as err:
        print(f"make: {err}", file=sys.stderr)
        return 2
    try:
        os.execvp(full[0], full)  # the command's exit status becomes the recipe's
    except OSError as err:
        print(f"make: cannot run {full[0]}: {err}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
