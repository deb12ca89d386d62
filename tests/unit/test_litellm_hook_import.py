"""Importing the LiteLLM hook loads no kopf, asyncpg or aiohttp, and checks LiteLLM first.

Runs in a fresh interpreter against a stand-in ``litellm`` package that has exactly
the names the hook uses (or one fewer), so it needs no LiteLLM install; the real
one is exercised by tests/integration/litellm.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "operator"
HEAVY = (
    "kopf",
    "asyncpg",
    "aiohttp",
    "kubernetes_asyncio",
    "pydantic_settings",
    "prometheus_client",
)

STUBS = {
    "litellm/__init__.py": "",
    "litellm/proxy/__init__.py": "",
    "litellm/proxy/_types.py": (
        "class ProxyException(Exception): pass\n"
        "class ProxyErrorTypes: auth_error = 'auth_error'\n"
        "class UserAPIKeyAuth: pass\n"
    ),
    "litellm/proxy/auth/__init__.py": "",
    "litellm/proxy/auth/resolvers/__init__.py": "",
    "litellm/proxy/auth/resolvers/store.py": "class IdentityStore: pass\n",
    "litellm/proxy/auth/user_api_key_auth.py": "async def validate_resolved_virtual_key(): pass\n",
    "litellm/proxy/auth/auth_utils.py": "def get_request_route(request): pass\n",
    "litellm/proxy/common_utils/__init__.py": "",
    "litellm/proxy/common_utils/http_parsing_utils.py": "async def read_request_body(r): pass\n",
}

PROBE = """
import json, sys
try:
    import jwtkeymap.litellm_hook
    error = None
except ImportError as exc:
    error = str(exc)
heavy = [m for m in json.loads(sys.argv[1]) if m in sys.modules]
print(json.dumps({"error": error, "heavy": heavy}))
"""


def _import_hook(tmp_path: Path, stubs: dict[str, str]) -> dict[str, object]:
    for name, text in stubs.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": f"{tmp_path}:{SOURCE}", "PATH": "/usr/bin:/bin"},
    )
    return dict(json.loads(out.stdout))


def test_hook_imports_light(tmp_path: Path) -> None:
    result = _import_hook(tmp_path, STUBS)
    assert result == {"error": None, "heavy": []}


def test_missing_litellm_internal_fails_naming_the_versions(tmp_path: Path) -> None:
    stubs = dict(STUBS)
    stubs["litellm/proxy/auth/user_api_key_auth.py"] = "# renamed away\n"
    result = _import_hook(tmp_path, stubs)
    error = str(result["error"])
    assert "needs LiteLLM >=1.108.7,<1.109 (tested with 1.108.7)" in error
    assert "validate_resolved_virtual_key" in error


MEMO_PROBE = """
import asyncio, json, sys
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
import jwtkeymap.litellm_hook as hook
from jwtkeymap.core.assertion import AssertionSigner, jwks, load_signing_keys
from jwtkeymap.core.errors import InvalidAssertion
from jwtkeymap.core.keys import KeyIdentity

def signer():
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    return AssertionSigner(load_signing_keys(pem))

calls = []
real = hook.verify
def counting(token, *args, **kw):
    calls.append(token)
    return real(token, *args, **kw)
hook.verify = counting

async def main():
    path = Path(sys.argv[1])
    old, new = signer(), signer()
    path.write_text(json.dumps(jwks(old.keys)))
    verifier = hook.Verifier(hook.KeySet(str(path), refresh_seconds=0), audience="litellm",
                             issuer=None)
    key = KeyIdentity(token_hash="a" * 64)
    token = old.assertion("mapped", key, None)
    first = await verifier.verify(token)
    again = await verifier.verify(token)
    once = len(calls)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    try:
        await verifier.verify(forged)
        forged_refused = False
    except InvalidAssertion:
        forged_refused = True
    # The old key is withdrawn; a new key's kid makes the hook load the keys again.
    path.write_text(json.dumps(jwks(new.keys)))
    await verifier.verify(new.assertion("mapped", key, None))
    try:
        await verifier.verify(token)
        old_refused = False
    except InvalidAssertion:
        old_refused = True
    print(json.dumps({"same": first == again, "verified_once": once == 1,
                      "forged_refused": forged_refused, "old_refused": old_refused}))

asyncio.run(main())
"""


def test_a_verified_assertion_is_remembered_until_the_keys_change(tmp_path: Path) -> None:
    for name, text in STUBS.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    out = subprocess.run(
        [sys.executable, "-c", MEMO_PROBE, str(tmp_path / "jwks.json")],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": f"{tmp_path}:{SOURCE}", "PATH": "/usr/bin:/bin"},
    )
    assert json.loads(out.stdout) == {
        "same": True,
        "verified_once": True,
        "forged_refused": True,
        "old_refused": True,
    }
