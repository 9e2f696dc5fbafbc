#!/usr/bin/env bash
# Installs the system programs the test suite drives for real: Chromium (browser
# tests), redis-server (Redis broker tests), nginx (proxy test). Needs root for
# apt-get; without root it only reports what is missing.
set -eu
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing system packages: ${missing[*]} (run as root, or apt-get install them)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q "${missing[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
# The Debian package starts a redis-server on 6379; the tests start their own.
if command -v systemctl >/dev/null; then systemctl disable --now redis-server nginx >/dev/null 2>&1 || true; fi
service redis-server stop >/dev/null 2>&1 || true
service nginx stop >/dev/null 2>&1 || true
