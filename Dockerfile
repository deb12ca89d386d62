# syntax=docker/dockerfile:1
# One image for both edges of jwtkeymap, chosen by command:
#   operator:  jwtkeymap operator --all-namespaces …      (the Helm chart's Deployment)
#   resolver:  jwtkeymap resolver --listen … --upstream … (the injected sidecar)
# Build: docker build -t ghcr.io/jwtkeymap/jwtkeymap:0.1.0 .
# Pin PYTHON_IMAGE by digest in release builds.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# --- build: compilers live here only, for any dependency without a wheel for this platform.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/jwtkeymap
WORKDIR /src
# Metadata first: the dependency layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
COPY operator ./operator
# Non-editable install with the optional Redis client and uvloop; bytecode is compiled
# here, once, because the runtime filesystem is read-only.
RUN /opt/jwtkeymap/bin/pip install '.[redis,fast]' \
 && /opt/jwtkeymap/bin/jwtkeymap --version

# --- runtime: the same slim base, the virtualenv, nginx, a non-root user, nothing else.
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="jwtkeymap" \
      org.opencontainers.image.description="JWT claim to LLM-gateway key mapping: operator and resolver sidecar" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/jwtkeymap/bin:$PATH
# nginx: the resolver's engine when a sidecar asks for it (`jwtkeymap.io/proxy-engine:
# nginx`); the resolver runs it as its own child, configured in /tmp, never as a service.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/* /var/log/nginx /etc/nginx/sites-enabled/*
# The uid/gid the chart's securityContext and the injected sidecar run as.
RUN groupadd --system --gid 10001 jwtkeymap \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin jwtkeymap
COPY --from=build /opt/jwtkeymap /opt/jwtkeymap
USER 10001:10001
WORKDIR /tmp
# resolver, operator webhooks, operator liveness, operator metrics
EXPOSE 8181 9443 8081 9090
ENTRYPOINT ["jwtkeymap"]
CMD ["--help"]
