"""load_defaults: one loader for the webhook's injection.yaml and `jwtkeymap inject --defaults`."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from jwtkeymap.core.errors import ConfigError
from jwtkeymap.operator.sidecar.defaults import InjectionDefaults, load_defaults


def write(tmp_path: Path, text: str, name: str = "injection.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_built_in_defaults_and_an_image_override() -> None:
    assert load_defaults(None) == InjectionDefaults()
    assert load_defaults(None, image="reg/jkm:1").image == "reg/jkm:1"


def test_the_configmaps_file_and_the_charts_values_give_the_same_defaults(tmp_path: Path) -> None:
    configmap = write(tmp_path, "listenPort: 9100\nimage: reg/jkm:2\n")
    values = write(
        tmp_path,
        "image: {repository: reg/jkm, tag: '2'}\ninjection: {resolver: {listenPort: 9100}}\n",
        "values.yaml",
    )
    assert load_defaults(configmap) == load_defaults(values)


def test_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("listenPort: 9200\n"))
    assert load_defaults("-").listen_port == 9200


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listenPort: [\n", r"invalid injection defaults in .*injection.yaml: not YAML"),
        ("- listenPort\n", r"invalid injection defaults in .*injection.yaml: expected a mapping"),
        ("listenPort: 0\n", r"injection.yaml: listenPort: Input should be greater"),
        ("database: {secretName: Db_Creds, key: url}\n", r"database.secretName"),
    ],
)
def test_errors_name_the_file_and_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_defaults(write(tmp_path, text))


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read injection defaults .*: No such file"):
        load_defaults(tmp_path / "missing.yaml")
