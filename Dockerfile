# The claude-box orchestrator, for compose.yaml. It starts sandboxes as
# siblings through the host's Docker socket (see README, "With Docker Compose").
#
# By default pip installs claude-box and its dependencies from the package
# index. Where containers cannot reach it (no network, or TLS re-signed by a CA
# only the host trusts), put wheels in .wheelhouse/ first and they are used
# instead, with no index at all:
#     pip wheel --wheel-dir .wheelhouse '.[linear,github]'
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 LC_ALL=C.UTF-8
# iptables: the host firewall for task networks (needs NET_ADMIN, host network).
# git: the GitHub worker pushes tasks' branches (from bundles, never in your repository).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates iptables tini git \
 && rm -rf /var/lib/apt/lists/*

COPY . /src
RUN python3 -m venv /opt/cbox \
 && if ls /src/.wheelhouse/claude_box-*.whl >/dev/null 2>&1; then \
        /opt/cbox/bin/pip install --no-cache-dir --no-index --find-links /src/.wheelhouse \
            'claude-box[linear,github]'; \
    else \
        /opt/cbox/bin/pip install --no-cache-dir '/src[linear,github]'; \
    fi \
 && rm -rf /src

ENV PATH=/opt/cbox/bin:$PATH \
    CBOX_DB_PATH=/data/cbox.db \
    CBOX_API_TOKEN_FILE=/data/api-token
VOLUME /data
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["cbox", "serve"]
