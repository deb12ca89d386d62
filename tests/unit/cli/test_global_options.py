"""--config, --database-url and --log-level work before or after any subcommand (parsing only)."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest

from jwtkeymap.cli.context import GLOBAL_OPTIONS, Context
from jwtkeymap.cli.main import cli

# Every command, with the arguments it needs to parse. A new command must be added here.
COMMANDS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("apply",): ("-f", "manifests/"),
    ("demo",): (),
    ("diff",): ("-f", "manifests/"),
    ("inject",): ("-f", "-"),
    ("key", "create"): ("--team-id", "t"),
    ("map", "add"): ("alice", "--key-hash", "0" * 64, "--any-issuer"),
    ("map", "disable"): ("m-1",),
    ("map", "enable"): ("m-1",),
    ("map", "list"): ("-o", "json"),
    ("map", "remove"): ("m-1",),
    ("migrate",): (),
    ("operator",): ("-A",),
    ("resolve",): ("--token", "t"),
    ("resolver",): ("--listen", "127.0.0.1:8080"),
}
GLOBALS = ("--config", "c.yaml", "--database-url", "postgresql://u@h/db", "--log-level", "debug")
EXPECTED = Context(config="c.yaml", database_url="postgresql://u@h/db", log_level="debug")


def parse(
    path: tuple[str, ...], args: tuple[str, ...], before: tuple[str, ...], after: tuple[str, ...]
) -> click.Context:
    """Parse ``jwtkeymap BEFORE PATH ARGS AFTER`` as click would, without running anything."""
    ctx = cli.make_context("jwtkeymap", [*before, *path])
    for depth, name in enumerate(path):
        group = ctx.command
        assert isinstance(group, click.Group)
        command = group.get_command(ctx, name)
        assert command is not None, name
        rest = [*args, *after] if depth == len(path) - 1 else list(path[depth + 1 :])
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


def context_of(ctx: click.Context) -> Context:
    found = ctx.find_object(Context)
    assert found is not None
    return found


def leaves(group: click.Group, ctx: click.Context, path: tuple[str, ...] = ()) -> Iterator[tuple]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            yield from leaves(command, ctx, (*path, name))
        else:
            yield (*path, name), command


def test_every_command_is_covered_and_takes_the_global_options() -> None:
    found = dict(leaves(cli, click.Context(cli)))
    assert sorted(found) == sorted(COMMANDS)
    for path, command in found.items():
        names = {p.name for p in command.params}
        assert set(GLOBAL_OPTIONS) <= names, path


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
@pytest.mark.parametrize("spelling", ["before", "after"])
def test_both_spellings_reach_the_command(
    path: tuple[str, ...], spelling: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JWTKEYMAP_DATABASE_URL", raising=False)
    before, after = (GLOBALS, ()) if spelling == "before" else ((), GLOBALS)
    ctx = parse(path, COMMANDS[path], before, after)
    assert context_of(ctx) == EXPECTED
    # The command's own arguments are untouched by the global ones.
    assert all(name not in ctx.params for name in GLOBAL_OPTIONS)


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_a_value_after_the_subcommand_wins(
    path: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JWTKEYMAP_DATABASE_URL", raising=False)
    before = ("--config", "before.yaml", "--database-url", "postgresql://before/db")
    after = ("--database-url", "postgresql://after/db", "--log-level", "error")
    context = context_of(parse(path, COMMANDS[path], before, after))
    assert context.config == "before.yaml"  # given only before: kept
    assert context.database_url == "postgresql://after/db"
    assert context.log_level == "error"


def test_the_environment_is_only_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWTKEYMAP_DATABASE_URL", "postgresql://env/db")
    assert context_of(parse(("migrate",), (), (), ())).database_url == "postgresql://env/db"
    for before, after in [
        (("--database-url", "postgresql://flag/db"), ()),
        ((), ("--database-url", "postgresql://flag/db")),
    ]:
        context = context_of(parse(("migrate",), (), before, after))
        assert context.database_url == "postgresql://flag/db", (before, after)


def test_a_group_in_between_takes_them_too() -> None:
    ctx = cli.make_context("jwtkeymap", ["--config", "root.yaml", "map"])
    group = cli.get_command(ctx, "map")
    assert isinstance(group, click.Group)
    ctx = group.make_context("map", ["--config", "map.yaml", "list"], parent=ctx)
    command = group.get_command(ctx, "list")
    assert command is not None
    ctx = command.make_context("list", [], parent=ctx)
    assert context_of(ctx).config == "map.yaml"


def test_subcommand_help_lists_them_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["migrate", "--help"])
    assert result.exit_code == 0
    own, _, shared = result.output.partition("Global options:")
    assert "--database-url" not in own
    assert "a value given here wins" in shared
    for option in ("--config", "--database-url", "--log-level"):
        assert option in shared
    root = CliRunner().invoke(cli, ["--help"])
    assert "may come before or after the subcommand" in " ".join(root.output.split())


def test_an_unknown_log_level_is_refused_after_the_subcommand_too() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["migrate", "--log-level", "loud"])
    assert result.exit_code == 2
    assert "Invalid value for '--log-level'" in result.output
