"""Kubernetes object names, checked the way the apiserver checks them.

One definition for the CRD mirror (``resource``), the offline manifests and the
sidecar injection's settings, so a name accepted offline is one a cluster accepts.
"""

from __future__ import annotations

import re
from typing import Final

# An RFC 1123 subdomain (Secret, ConfigMap and most object names), anchored for
# pydantic and JSON schema, which search rather than match.
DNS_SUBDOMAIN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_SUBDOMAIN_RE: Final = re.compile(DNS_SUBDOMAIN)
