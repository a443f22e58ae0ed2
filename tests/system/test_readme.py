"""The README's configuration table names every flag and environment variable."""

from __future__ import annotations

from pathlib import Path

from proxy import config
from proxy.cli import make_parser

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_flag_and_variable_is_in_the_configuration_table() -> None:
    parser = make_parser()
    flags = [
        a.option_strings[0]
        for a in parser._actions
        if a.option_strings and a.option_strings[0].startswith("--") and a.dest != "help"
    ]
    assert len(flags) > 15
    assert [f for f in flags if f"| `{f}`" not in README] == []
    assert [v for v, _ in config.ENV.values() if v not in README] == []


def test_the_two_commands_are_there() -> None:
    assert "python3 -m pip install -e . && storage-manager --cache-dir ./cache" in README
    assert "python3 -m pip install -e '.[test]' && python3 -m pytest" in README
    assert (
        "python3 -m pip install -e '.[test]' && python3 -m pytest"
        in (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    )


def test_the_configuration_table_matches_the_options_table() -> None:
    """Each option's README row names its variable and its default, as config.OPTIONS does."""
    rows = {
        line.split("|")[1].strip(): line for line in README.splitlines() if line.startswith("| `--")
    }
    wrong = []
    for option in config.OPTIONS:
        row = rows.get(f"`--{option.flag}`", "")
        cells = [c.strip() for c in row.split("|")[2:4]]
        if len(cells) < 2 or not cells[0].startswith(f"`{option.env}"):
            wrong.append((option.flag, "variable", cells))
            continue
        default = cells[1]
        if option.metavar is None:
            ok = default == "off"
        else:
            ok = default in (f"`{option.default}`", option.shown_default)
        if not ok:
            wrong.append((option.flag, "default", default))
    assert wrong == []
