"""The README's configuration table and flag list match the code."""

import re
from pathlib import Path

from service.commands.cli import SERVE_FLAGS
from service.settings import Settings

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_configuration_table_lists_every_setting() -> None:
    documented = set(re.findall(r"^\| `RESNET_SERVE_([A-Z_]+)` \|", README, re.MULTILINE))
    assert documented == {name.upper() for name in Settings.model_fields}


def test_every_flag_is_documented() -> None:
    for flag in SERVE_FLAGS:
        assert f"`{flag}`" in README


def test_readme_opens_with_the_two_commands() -> None:
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    assert [line.split()[0] for line in first_block.strip().splitlines()] == [
        "scripts/serve",
        "scripts/test",
    ]
    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text()
    assert "exec scripts/test" in ci
