#!/usr/bin/env bash
# Installs the Debian packages the lab needs when they are missing: ZooKeeper (run
# directly with java), iptables (network faults) and the PostgreSQL server programs.
# As root it runs apt-get itself; otherwise it prints the exact command and fails.
set -euo pipefail

missing=()
if ! command -v java >/dev/null 2>&1 || [ ! -e /usr/share/java/zookeeper.jar ]; then
    missing+=(zookeeper)
fi
if ! command -v iptables >/dev/null 2>&1 && [ ! -x /usr/sbin/iptables ]; then
    missing+=(iptables)
fi
# systemd-analyze checks the units in systemd/ (tests/packaging); no running systemd needed.
if ! command -v systemd-analyze >/dev/null 2>&1; then
    missing+=(systemd)
fi
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    missing+=(postgresql postgresql-contrib)
fi
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "missing system packages; run as root: apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
