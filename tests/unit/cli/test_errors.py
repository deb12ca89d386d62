"""One error boundary for every command, sync or async: a core error is one line, exit 1."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from jwtkeymap.cli.errors import describe_error
from jwtkeymap.cli.main import cli
from jwtkeymap.core.errors import ConfigError, DatabaseUnavailable, JwtKeyMapError, StoreError

MISSING = "/nonexistent/jwtkeymap.yaml"


@pytest.mark.parametrize(
    "args",
    [
        ("migrate",),  # async
        ("map", "list"),  # async, in a group
        ("operator", "-n", "x"),  # sync
        ("resolver",),  # sync
        ("apply", "-f", "-"),  # async, with its own exit codes
    ],
    ids=" ".join,
)
def test_a_core_error_is_one_line_from_any_command(args: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, ["--config", MISSING, *args], input="")
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: configuration error: configuration file {MISSING} does not exist"]


def test_a_usage_error_in_an_async_command_shows_the_usage_line() -> None:
    result = CliRunner().invoke(cli, ["migrate"], env={"JWTKEYMAP_DATABASE_URL": None})
    assert result.exit_code == 2
    assert result.output.splitlines()[0].startswith("Usage: ")
    assert "Try 'cli migrate --help' for help." in result.output
    assert "no database configured" in result.output


def test_describe_error_names_the_most_specific_kind() -> None:
    assert describe_error(ConfigError("x")) == "configuration error: x"
    assert describe_error(DatabaseUnavailable("down")) == "database unavailable: down"
    assert describe_error(StoreError("boom")) == "database error: boom"
    assert describe_error(JwtKeyMapError("plain")) == "plain"
