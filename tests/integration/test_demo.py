"""`make demo` runs `jwtkeymap demo`; its decisions are the product's, so pin them."""

from __future__ import annotations

import asyncio

from jwtkeymap.demo.checks import through_the_resolver
from jwtkeymap.demo.manifests import manifests, run_cli, seed_example_keys
from jwtkeymap.demo.scenarios import BEHAVIORS, decide_all, render


async def test_demo_decisions(empty_database_url: str) -> None:
    table_rows = await decide_all(empty_database_url)
    rows = {r[0]: dict(zip(BEHAVIORS, r[1:], strict=True)) for r in table_rows}
    assert rows["alice (mapped, team alpha)"]["reject"] == "200 mapped (team-alpha)"
    partner = rows["carol via partner IdP (no mapping there)"]
    assert partner == {
        "reject": "403 unregistered_client",
        "fallback_team_mapping": "200 fallback",
        "auto_register": "200 auto_registered (team-sandbox)",
    }
    assert rows["bob (mapping disabled)"]["auto_register"] == "403 mapping_inactive"
    assert set(rows["dave (key blocked)"].values()) == {"403 key_blocked"}
    assert (
        rows["erin (unregistered, team claim)"]["auto_register"]
        == "200 auto_registered (team-gamma)"
    )
    assert set(rows["expired token"].values()) == {"401 invalid_token"}
    assert set(rows["forged (unknown signer)"].values()) == {"401 invalid_token"}
    assert set(rows["platform admin (scope)"].values()) == {"200 admin"}
    table = render(table_rows)
    assert table.splitlines()[0].split()[0] == "REQUEST"


async def test_demo_manifest_flow_and_resolver(database_url: str) -> None:
    await seed_example_keys(database_url)
    with manifests() as examples:
        applied = await asyncio.to_thread(run_cli, database_url, "apply", "-f", str(examples))
        assert "1 adopted, 3 created" in applied
        again = await asyncio.to_thread(run_cli, database_url, "apply", "-f", str(examples))
        assert "4 unchanged" in again
    rows = {
        label: (result, team) for label, result, team in await through_the_resolver(database_url)
    }
    assert rows["alice@alpha (any issuer)"] == ("200 mapped", "team-alpha")
    assert rows["carol@beta via corporate IdP"] == ("200 mapped", "team-beta")
    assert rows["carol@beta via partner IdP"][0] == "403 unregistered_client"
    assert rows["bob@alpha (inactive)"][0] == "403 mapping_inactive"
    assert rows["no Authorization header"][0] == "401 invalid_token"
    assert any(label.startswith("alice after an SQL UPDATE") for label in rows)
