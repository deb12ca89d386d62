"""The resolver sidecar: enforces the policy next to a proxy, over HTTP.

``/check`` answers Envoy's HTTP ext_authz and nginx's ``auth_request``; with an
upstream configured it is also a streaming reverse proxy. It uses only
``jwtkeymap.core`` and never the operator.
"""

from jwtkeymap.resolver.app import Service, create_app, run
from jwtkeymap.resolver.check import IDENTITY_HEADERS, Answer

__all__ = ["IDENTITY_HEADERS", "Answer", "Service", "create_app", "run"]
