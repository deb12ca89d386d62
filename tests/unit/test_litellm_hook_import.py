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
