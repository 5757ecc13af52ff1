"""docs/cli.md, the command-line reference, generated from the parsers and the configuration schema.

`python -m gpuclust.clidoc > docs/cli.md` rewrites it; tests/test_cli_reference.py fails when the committed page
differs from what this prints.
"""
from __future__ import annotations

import argparse
from typing import Any

from .config import SECTIONS, Option, options

REGENERATE = "python -m gpuclust.clidoc > docs/cli.md"

_INTRO = f"""# Command-line reference

Generated from the parsers by `{REGENERATE}`: change a flag's help where the flag is defined
(`gpuclust/config.py` for a run setting, the module's `get_args_parser()` otherwise), then regenerate this page.
"""

_RUN_INTRO = """Settings apply in this order: the defaults below, then the `--config` YAML file, then the flags
given. In the YAML file a setting sits under its section (`encode: {precision: bf16}`); the run's own settings are
top-level keys (`seed: 3`). A flag left out keeps the YAML file's value.
"""


def _cell(text: str) -> str:
    """Plain text for a table cell: a pipe would end the cell and `<time>` would be read as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    return f"`{text.replace('|', chr(92) + '|')}`"


def _yaml(value: Any) -> str:
    """A default as the YAML file spells it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _flag(action: argparse.Action) -> str:
    """`--limit N`, `--zscore, --no-zscore`, `-q, --quiet`, or a positional's metavar."""
    names = ", ".join(action.option_strings) or action.metavar or action.dest
    takes_value = action.nargs != 0 and action.option_strings and action.choices is None
    return _code(f"{names} {action.metavar}" if takes_value and action.metavar else names)


def _choices(action: argparse.Action) -> str:
    return ", ".join(f"`{c}`" for c in action.choices) if action.choices is not None else ""


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def _plain_default(action: argparse.Action) -> str:
    if action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
        return ""
    return _code(_yaml(action.default))


def plain_table(parser: argparse.ArgumentParser, skip: set[str] = frozenset()) -> str:
    """Every argument of `parser` (positionals first, as it lists them) as a markdown table; `skip`: dests to leave
    out."""
    rows = [[_flag(a), _plain_default(a), _choices(a), _cell(a.help or "")]
            for a in parser._actions if a.dest not in skip and a.help != argparse.SUPPRESS]
    return _table(["Flag", "Default", "Choices", "Help"], rows)


def _setting_row(opt: Option, action: argparse.Action) -> list[str]:
    return [_flag(action), _code(opt.key), _code(_yaml(opt.default)), _choices(action), _cell(opt.help)]


def _run_section(parser: argparse.ArgumentParser, section: str) -> str:
    by_dest = {a.dest: a for a in parser._actions}
    rows = [_setting_row(opt, by_dest[opt.key]) for opt in options() if opt.section == section and opt.flag]
    yaml_only = [f"`{opt.key}`" for opt in options() if opt.section == section and not opt.flag]
    title = "run (top-level keys)" if section == "run" else section
    text = f"### {title}\n\n" + _table(["Flag", "YAML key", "Default", "Choices", "Help"], rows)
    return text + (f"\nSet in YAML only: {', '.join(yaml_only)}.\n" if yaml_only else "")


def run_reference() -> str:
    """`python -m gpuclust.run`: its own flags, then one table per configuration section."""
    from .run import get_args_parser

    parser = get_args_parser()
    keys = {opt.key for opt in options()}
    parts = [f"## {parser.prog}\n\n{parser.description}\n\n{_RUN_INTRO}", plain_table(parser, skip=keys)]
    parts += [_run_section(parser, section) for section in SECTIONS]
    return "\n".join(parts)


def other_parsers() -> list[argparse.ArgumentParser]:
    """The parsers of the commands besides gpuclust.run, in the page's order."""
    from .assign import get_args_parser as assign_parser
    from .explore.cli import get_args_parser as explore_parser
    from .export import get_args_parser as export_parser
    from .sweep import get_args_parser as sweep_parser

    return [sweep_parser(), export_parser(), assign_parser(), explore_parser()]


def cli_reference() -> str:
    """The whole page: gpuclust.run, then gpuclust.sweep, .export, .assign and .explore."""
    parts = [_INTRO, run_reference()]
    for parser in other_parsers():
        parts.append(f"## {parser.prog}\n\n{parser.description}\n\n{plain_table(parser)}")
    return "\n".join(parts)


def main() -> int:
    """Print the page (redirect it to docs/cli.md)."""
    print(cli_reference(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
