"""Errors that the CLI turns into exit code 2 with one line on stderr."""
from __future__ import annotations

import argparse


class UserError(Exception):
    """Bad input, bad usage or a missing optional dependency: exit 2, one line, no traceback."""


class MissingDependency(UserError, ImportError):
    """An optional extra is not installed; the message carries the install command."""


def require(module: str, purpose: str, install: str):
    """Import `module`, or raise MissingDependency naming `purpose` and the `install` command.

    Only a missing `module` itself (or its top-level package) is reported as a missing extra; an ImportError
    raised from inside an installed package is a broken install and propagates unchanged.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if getattr(exc, "name", None) not in (module, top):
            raise
        raise MissingDependency(f"{purpose} needs {top}, which is not installed: {install}") from None


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other user error (argparse would print the whole usage
    block first); `name` is the line's prefix, e.g. "gpuclust"."""

    def __init__(self, *args, name: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.name = name

    def error(self, message: str):
        """Print `NAME: error: MESSAGE (see --help)` on stderr and exit with status 2 (raises SystemExit)."""
        self.exit(2, f"{self.name}: error: {message} (see --help)\n")


def exception_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one line, its type and the first line of its message: a typo in a model name reads
    differently from a refused connection."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit]}" if text else type(exc).__name__


def one_line(text: object) -> str:
    """A message as one printable line: characters that break or hide a line (a file name may hold any) are escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
