# pgwarden with PostgreSQL 15 on Debian 12: one image for every database node of
# docker-compose.yml. The agent runs as postgres and owns the instance (initdb, clone,
# start, promote, rewind); its configuration is mounted at /etc/pgwarden/pgwarden.yml.
#   docker build -t pgwarden .
FROM postgres:15-bookworm

# Debian's python3 (the postgres user runs pgwarden through archive_command, so the venv
# must be made from a system interpreter) and curl for the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv curl \
    && rm -rf /var/lib/apt/lists/*

# pgwarden from this source tree, in the same place playbooks/site.yml installs it.
COPY pyproject.toml README.md /src/pgwarden/
COPY src /src/pgwarden/src
RUN python3 -m venv /opt/pgwarden/venv \
    && /opt/pgwarden/venv/bin/pip install --no-cache-dir /src/pgwarden \
    && ln -s /opt/pgwarden/venv/bin/pgwarden /usr/local/bin/pgwarden \
    && mkdir -p /etc/pgwarden \
    && chown postgres:postgres /var/lib/postgresql

# The image's entrypoint would initdb by itself: pgwarden decides whether this node
# bootstraps the cluster or clones the leader.
ENTRYPOINT []
USER postgres
WORKDIR /var/lib/postgresql
EXPOSE 5432 8008
CMD ["pgwarden", "agent", "-c", "/etc/pgwarden/pgwarden.yml"]
