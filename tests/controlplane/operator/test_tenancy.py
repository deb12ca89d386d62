"""Tenancy against the real API server: JWTKeyMappingPolicy, enforced by webhook and operator.

Policies are cluster-scoped, so each test labels its own namespaces (which takes them out
of the session's open policy, see conftest) and writes policies that select that label.
"""

from __future__ import annotations

import json
import types
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import kopf
import pytest
from harness import ControlPlane, apoll
from operator_kit import TENANCY_LABEL, Cluster, StartOperator, WebhookSetup, add_key, rows

from jwtkeymap.core.claims import MappingIdentity
from jwtkeymap.core.db.keys import NewKey
from jwtkeymap.core.db.store import Store
from jwtkeymap.core.owners import AUTO_REGISTERED
from jwtkeymap.core.settings import Settings
from jwtkeymap.operator.kube import Connection, Kube
from jwtkeymap.operator.webhooks import validate

pytestmark = pytest.mark.controlplane

ADOPT = {"jwtkeymap.io/adopt": "true"}


class Tenants:
    """Namespaces of this test, labelled out of the open policy, and policies selecting them."""

    def __init__(self, controlplane: ControlPlane) -> None:
        self.plane = controlplane
        self.tag = uuid.uuid4().hex[:10]
        self.policies: list[str] = []

    def namespace(self, team: str) -> str:
        name = f"{team}-{self.tag}"
        self.plane.kubectl("create", "namespace", name, check=True)
        self.plane.kubectl("label", "namespace", name, f"{TENANCY_LABEL}={self.tag}", check=True)
        return name

    def policy(self, namespace: str, values: list[str], **adopt: bool) -> str:
        name = f"{namespace}-policy"
        body = {
            "apiVersion": "jwtkeymap.io/v1alpha1",
            "kind": "JWTKeyMappingPolicy",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": namespace, TENANCY_LABEL: self.tag}
                },
                "issuers": ["*"],
                "claims": [{"name": "email", "values": values}],
                "adopt": adopt,
            },
        }  # fmt: skip
        self.plane.kubectl("apply", "-f", "-", input=json.dumps(body), check=True)
        self.policies.append(name)
        return name


@pytest.fixture
def tenants(controlplane: ControlPlane) -> Iterator[Tenants]:
    made = Tenants(controlplane)
    yield made
    for name in made.policies:
        controlplane.kubectl("delete", "jwtkeymappingpolicy", name, "--ignore-not-found")


def mapping(namespace: str, name: str, value: str, token: str, **spec: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "jwtkeymap.io/v1alpha1",
            "kind": "JWTKeyMapping",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "claim": {"name": "email", "value": value},
                "key": {"hash": token},
                **({"issuer": "*"} | spec),
            },
        }
    )


async def test_the_webhook_refuses_what_no_policy_allows_and_names_no_tenant(
    controlplane: ControlPlane,
    cluster: Cluster,
    start_operator: StartOperator,
    webhook: WebhookSetup,
    database_url: str,
    db: asyncpg.Connection,
    tenants: Tenants,
) -> None:
    alpha, mallory = tenants.namespace("alpha"), tenants.namespace("mallory")
    alpha_policy = tenants.policy(alpha, ["*@alpha.example.com"])
    token = await add_key(db, "sk-tenancy-webhook")
    await start_operator([alpha, mallory], database_url, webhook=webhook)

    async def refused(namespace: str, name: str, value: str, *dry_run: str) -> str | None:
        done = await controlplane.akubectl(
            "create", *dry_run, "-f", "-", input=mapping(namespace, name, value, token)
        )
        return done.stderr if done.returncode != 0 else None

    # No policy selects mallory's namespace: the refusal says what a platform team must create.
    # (Probed with server-side dry runs until the API server has loaded the configuration.)
    await apoll(
        lambda: refused(mallory, "grab", "alice@alpha.example.com", "--dry-run=server"),
        message="the webhook to refuse mallory",
    )
    stderr = await refused(mallory, "grab", "alice@alpha.example.com")
    assert stderr is not None
    assert f"no JWTKeyMappingPolicy selects namespace {mallory}" in stderr
    assert "a cluster administrator must create or extend one" in stderr
    assert await cluster.get(mallory, "grab") is None

    created = await controlplane.akubectl(
        "create", "-f", "-", input=mapping(alpha, "alice", "alice@alpha.example.com", token)
    )
    assert created.returncode == 0, created.stderr
    await cluster.wait_reason(alpha, "alice", "Synced")

    # Alpha's policy allows alpha's addresses only.
    outside = await refused(alpha, "victim", "victim@beta.example.com")
    assert outside is not None
    assert f"no JWTKeyMappingPolicy allows issuer *, email=victim@beta.example.com in namespace {alpha}" in outside  # fmt: skip
    assert f"(policies selecting it: {alpha_policy})" in outside

    # Allowed the same pattern, mallory still cannot take alice's identity, nor learn whose it is.
    tenants.policy(mallory, ["*@alpha.example.com"])

    async def taken() -> str | None:
        stderr = await refused(mallory, "grab", "alice@alpha.example.com", "--dry-run=server")
        return stderr if stderr and "already mapped" in stderr else None

    stderr = await apoll(taken, message="mallory's policy to be seen, and the claim refused")
    assert "email=alice@alpha.example.com is already mapped by another JWTKeyMapping" in stderr
    assert alpha not in stderr and "alice " not in stderr

    # The scope is explicit: the API server refuses a mapping without one, naming the fix.
    no_scope = json.loads(mapping(alpha, "scopeless", "bob@alpha.example.com", token))
    del no_scope["spec"]["issuer"]
    done = await controlplane.akubectl("create", "-f", "-", input=json.dumps(no_scope))
    assert done.returncode != 0
    assert 'spec.issuer: required: set an issuer URL (e.g. https://idp.example.com), or "*"' in (
        done.stderr
    )


async def test_the_operator_denies_and_adopts_only_what_a_policy_allows(
    cluster: Cluster,
    start_operator: StartOperator,
    database_url: str,
    db: asyncpg.Connection,
    tenants: Tenants,
) -> None:
    alpha, beta, mallory = (tenants.namespace(t) for t in ("alpha", "beta", "mallory"))
    tenants.policy(alpha, ["*@shared.example.com"], autoRegistered=True)
    tenants.policy(beta, ["*@shared.example.com"], unowned=True)
    token = await add_key(db, "sk-tenancy-operator")
    # The resolver auto-registered the victim (a key and an owned row of its own).
    store = await Store.open(database_url)
    try:
        victim = MappingIdentity("", "email", "victim@shared.example.com")
        await store.register(victim, NewKey(team_id="sandbox"))
    finally:
        await store.close()
    [auto] = await rows(db)
    assert auto["owner"] == AUTO_REGISTERED

    # No webhook here: the operator enforces the policies on its own.
    await start_operator([alpha, beta, mallory], database_url)
    for namespace, name in ((mallory, "grab"), (mallory, "other")):
        value = "victim@shared.example.com" if name == "grab" else "nobody@shared.example.com"
        await cluster.apply_mapping(
            namespace,
            name,
            {"issuer": "*", "claim": {"name": "email", "value": value}, "key": {"hash": token}},
            annotations=ADOPT,
        )
    for name in ("grab", "other"):
        obj = await cluster.wait_reason(mallory, name, "PolicyDenied")
        [ready] = obj["status"]["conditions"]
        assert ready["status"] == "False"
        assert f"no JWTKeyMappingPolicy selects namespace {mallory}" in ready["message"]

    # Beta may adopt rows made outside jwtkeymap, not auto-registered ones.
    spec = {
        "issuer": "*",
        "claim": {"name": "email", "value": "victim@shared.example.com"},
        "key": {"hash": token},
    }
    await cluster.apply_mapping(beta, "take", spec, annotations=ADOPT)
    obj = await cluster.wait_reason(beta, "take", "PolicyDenied")
    message = obj["status"]["conditions"][0]["message"]
    assert "already mapped by an auto-registered mapping" in message
    assert "no policy lets this declaration adopt auto-registered mappings" in message
    assert await rows(db) == [auto]  # nothing written

    # Alpha's policy allows it: the row is adopted, key and owner replaced.
    await cluster.apply_mapping(alpha, "take", spec, annotations=ADOPT)
    obj = await cluster.wait_reason(alpha, "take", "Synced")
    [row] = await rows(db)
    assert (row["id"], row["token"]) == (auto["id"], token)
    assert row["owner"] == f"k8s:{obj['metadata']['uid']}"


async def test_the_webhook_decides_from_the_api_not_from_stale_indexes(
    controlplane: ControlPlane, tenants: Tenants
) -> None:
    """A standby replica's kopf indexes are empty or stale (peering pauses its watches), and
    the active one's lag a watch behind: the webhook reads the policies, the namespace and the
    mappings from the API, so no replica refuses what a policy allows or admits a taken
    identity because of what its indexes say."""
    alpha, mallory = tenants.namespace("alpha"), tenants.namespace("mallory")
    tenants.policy(alpha, ["*@alpha.example.com"])
    controlplane.kubectl(
        "apply", "-f", "-", check=True,
        input=mapping(alpha, "taken", "held@alpha.example.com", "c" * 64),
    )  # fmt: skip
    kube = await Kube.connect(
        Connection(controlplane.server, controlplane.token, controlplane.ca_file)
    )
    memo = kopf.Memo()
    memo["jwtkeymap.runtime"] = types.SimpleNamespace(kube=kube)
    # What a standby's indexes held when peering paused it: no policy, no mapping.
    stale: dict[str, Any] = {
        "by_identity": {},
        "policies": {},
        "namespace_labels": {alpha: [{}], mallory: [{}]},
    }
    settings = Settings(database_url="postgresql://unused@127.0.0.1/unused")

    async def review(namespace: str, value: str) -> kopf.AdmissionError | None:
        spec = json.loads(mapping(namespace, "new", value, "d" * 64))["spec"]
        try:
            await validate(spec, namespace, "new", "uid-new", config=settings, memo=memo, **stale)
        except kopf.AdmissionError as refused:
            return refused
        return None

    try:
        assert await review(alpha, "new@alpha.example.com") is None
        taken = await review(alpha, "held@alpha.example.com")
        assert taken is not None and taken.code == 409
        outside = await review(mallory, "new@alpha.example.com")
        assert outside is not None and outside.code == 403
        assert f"no JWTKeyMappingPolicy selects namespace {mallory}" in str(outside)
    finally:
        await kube.close()
        controlplane.kubectl("delete", "jwtkeymapping", "taken", "-n", alpha, "--wait=false")
