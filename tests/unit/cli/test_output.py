"""Tables the command line prints: aligned, no trailing spaces, stable for golden files."""

from __future__ import annotations

from jwtkeymap.cli.offline import format_rows
from jwtkeymap.cli.output import format_table
from jwtkeymap.operator.offline import Row


def test_format_table_aligns_columns_without_trailing_spaces() -> None:
    table = format_table([("A", "LONG HEADER", "C"), ("wide value", "x", "")])
    assert table.splitlines() == [
        "A           LONG HEADER  C",
        "wide value  x",
    ]


def test_offline_table() -> None:
    rows = [
        Row("a/x", "*", "email=x", "abc", "created"),
        Row("a/y", "https://i", "email=y", "def", "conflict", "held by b/y"),
    ]
    assert format_rows(rows).splitlines() == [
        "RESOURCE  ISSUER     CLAIM    KEY  RESULT    DETAIL",
        "a/x       *          email=x  abc  created",
        "a/y       https://i  email=y  def  conflict  held by b/y",
    ]


def test_offline_table_with_no_rows_is_the_header() -> None:
    assert format_rows([]) == "RESOURCE  ISSUER  CLAIM  KEY  RESULT  DETAIL"
