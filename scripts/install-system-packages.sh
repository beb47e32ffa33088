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
# promtool checks deploy/prometheus/ (tests/unit/test_prometheus_rules.py). It is taken out
# of Debian's prometheus package rather than installing the package, which would also
# enable and start a Prometheus server on hosts that run systemd.
promtool_steps="d=\$(mktemp -d) && chmod 755 \$d && cd \$d && apt-get download prometheus && dpkg-deb --fsys-tarfile prometheus_*.deb | tar -xO ./usr/bin/promtool > /usr/local/bin/promtool && chmod 755 /usr/local/bin/promtool && rm -r \$d"
need_promtool=false
if ! command -v promtool >/dev/null 2>&1; then
    need_promtool=true
fi
if [ "${#missing[@]}" -eq 0 ] && [ "$need_promtool" = false ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "missing system packages; run as root: apt-get update && apt-get install -y ${missing[*]}" >&2
    fi
    if [ "$need_promtool" = true ]; then
        echo "missing promtool; run as root: apt-get update && ($promtool_steps)" >&2
    fi
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing system packages: ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ "$need_promtool" = true ]; then
    echo "installing promtool from Debian's prometheus package into /usr/local/bin"
    (eval "$promtool_steps") >/dev/null
fi
