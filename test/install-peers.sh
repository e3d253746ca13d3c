#!/usr/bin/env bash
# Installs the real peers the test suite runs against (Debian packages), as root. Idempotent and quick when
# everything is present.
set -euo pipefail
PKGS=(docker-registry notary skopeo podman containerd docker.io softhsm2 opensc openssl curl iproute2 faketime)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-peers: all present (${PKGS[*]})"
  exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
echo "install-peers: apt-get install ${missing[*]}"
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install "${opts[@]}" "${missing[@]}" >/dev/null
# The packages' own services are not used: the tests start every peer on loopback themselves.
for s in docker containerd docker-registry notary-server notary-signer; do
  $SUDO systemctl disable --now "$s" >/dev/null 2>&1 || true
done
echo "install-peers: done"
