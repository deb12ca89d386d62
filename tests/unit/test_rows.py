"""Rows read from the database: a key hash is used only in its one valid form."""

from __future__ import annotations

import pytest

from jwtkeymap.core.cache import Mapped
from jwtkeymap.core.db.rows import entry
from jwtkeymap.core.errors import InvalidKeyHash


def row(token: str) -> dict[str, object]:
    return {
        "id": "m1",
        "jwt_issuer": "",
        "is_active": True,
        "token": token,
        "team_id": "t",
        "user_id": None,
        "organization_id": None,
        "blocked": False,
        "expires": None,
    }


def test_a_valid_hash_is_read() -> None:
    got = entry(row("0" * 64))
    assert isinstance(got, Mapped) and got.key.token_hash == "0" * 64


@pytest.mark.parametrize(
    "token", ["a" * 63 + "\r\n", "é" * 64, "A" * 64, "a" * 65, "", "sk-plaintext"]
)
def test_a_malformed_hash_is_refused_where_it_is_read(token: str) -> None:
    with pytest.raises(InvalidKeyHash) as err:
        entry(row(token))
    assert token not in str(err.value) or not token
    assert "m1" in str(err.value)
