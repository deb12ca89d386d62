"""The resolver sidecar: enforces the policy next to a proxy, over HTTP.

``/check`` answers Envoy's HTTP ext_authz and nginx's ``auth_request``; with an
upstream configured it is also a streaming reverse proxy. It uses only
``jwtkeymap.core`` and never the operator.
"""
