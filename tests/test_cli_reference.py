"""docs/cli.md is generated from the parsers and the configuration schema; the committed page must match."""
from pathlib import Path

from gpuclust.clidoc import REGENERATE, cli_reference

PAGE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_committed_cli_reference_is_up_to_date():
    assert PAGE.is_file(), f"docs/cli.md is missing: run `{REGENERATE}`"
    assert PAGE.read_text(encoding="utf-8") == cli_reference(), \
        f"docs/cli.md is out of date with the flags: run `{REGENERATE}` and commit it"


def test_reference_lists_every_flag_of_every_command():
    from gpuclust.clidoc import other_parsers
    from gpuclust.run import get_args_parser as run_parser

    page = cli_reference()
    parsers = [run_parser(), *other_parsers()]
    assert [p.prog for p in parsers] == ["python -m gpuclust.run", "python -m gpuclust.sweep",
                                         "python -m gpuclust.export", "python -m gpuclust.assign",
                                         "python -m gpuclust.explore"]
    for parser in parsers:
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in page, (parser.prog, flag)


def test_reference_names_each_setting_with_its_yaml_key_and_default():
    from gpuclust.config import options

    page = cli_reference()
    assert "| `--precision` | `encode.precision` | `fp32` | `fp32`, `bf16`, `fp16` |" in page
    assert "| `--k-range MIN:MAX` | `cluster.k_range` | `[2, 30]` |" in page
    for opt in options():
        assert f"`{opt.key}`" in page, opt.key
