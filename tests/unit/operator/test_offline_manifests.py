"""Reading manifests for the offline mode (no database): errors name file, document and field."""

from __future__ import annotations

import io
from pathlib import Path

from jwtkeymap.operator.offline import Row, env_name, load, summary

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "mappings"


def test_examples_load_cleanly() -> None:
    manifests = load([str(EXAMPLES)])
    assert manifests.errors == []
    assert [m.ref for m in manifests.mappings] == [
        "team-alpha/alice",
        "team-alpha/bob",
        "team-beta/carol",
        "team-beta/ci-robot",
    ]
    assert set(manifests.secrets) == {
        ("team-alpha", "alpha-llm-keys"),
        ("team-beta", "beta-ci-key"),
    }
    assert [p.name for p in manifests.policies] == ["team-alpha", "team-beta"]
    carol = manifests.mappings[2]
    assert carol.spec.issuer == "https://idp.example.com"
    assert carol.source.endswith("team-beta.yaml: document 2")


def test_secret_data_is_decoded_and_string_data_kept(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: n}\n"
        "data: {a: c2stYQ==}\nstringData: {b: sk-b}\n"
    )
    assert load([str(path)]).secrets == {("n", "s"): {"a": "sk-a", "b": "sk-b"}}


def test_errors_are_collected_with_locations(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "- not an object\n---\n"
        "apiVersion: jwtkeymap.io/v1alpha1\nkind: JWTKeyMapping\nmetadata: {name: a}\n"
        "spec: {issuer: '*', claim: {name: email, value: x}, key: {hash: zz}}\n---\n"
        "apiVersion: jwtkeymap.io/v1alpha1\nkind: JWTKeyMapping\nmetadata: {name: b}\n"
        "spec: {issuer: '*', claim: {name: email, value: y}, key: {hash: '"
        + "0"
        * 64
        + "'}}\n---\n"
        "apiVersion: jwtkeymap.io/v1alpha1\nkind: JWTKeyMapping\nmetadata: {name: b}\n"
        "spec: {issuer: '*', claim: {name: email, value: z}, key: {hash: '"
        + "0"
        * 64
        + "'}}\n---\n"
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {k: '%%%'}\n"
    )
    manifests = load([str(path)])
    assert manifests.errors == [
        f"{path}: document 1: expected a mapping (a Kubernetes object)",
        f"{path}: document 2 (default/a): spec.key.hash: must be the sha256 of a virtual key "
        "(64 lowercase hex characters); use key.secretRef for a plaintext key",
        f"{path}: document 4: metadata.name: default/b is also declared in {path}: document 3",
        f"{path}: document 5: data.k: not base64 UTF-8 text",
    ]
    assert [m.ref for m in manifests.mappings] == ["default/b"]


def test_lists_stdin_missing_files_and_default_namespace(tmp_path: Path) -> None:
    stdin = io.StringIO(
        "apiVersion: v1\nkind: List\nitems:\n"
        "- apiVersion: jwtkeymap.io/v1alpha1\n  kind: JWTKeyMapping\n  metadata: {name: a}\n"
        "  spec: {issuer: '*', claim: {name: sub, value: '7'}, key: {hash: '" + "1" * 64 + "'}}\n"
    )
    manifests = load(["-", str(tmp_path / "missing.yaml")], default_namespace="ops", stdin=stdin)
    assert [m.ref for m in manifests.mappings] == ["ops/a"]
    assert manifests.errors == [
        f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory"
    ]


def test_env_name() -> None:
    assert env_name("alpha-llm-keys", "api.key") == "JWTKEYMAP_SECRET_ALPHA_LLM_KEYS_API_KEY"


def test_summary() -> None:
    rows = [
        Row("a/x", "*", "email=x", "abc", "created"),
        Row("a/y", "https://i", "email=y", "def", "conflict", "held by b/y"),
    ]
    assert summary(rows) == "1 conflict, 1 created"
    assert rows[1].failed and not rows[0].failed
