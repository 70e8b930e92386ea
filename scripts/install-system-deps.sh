#!/usr/bin/env bash
# Installs the Debian packages named on the command line when they are missing.
# Needs root and apt-get; elsewhere it says what to install and carries on (tests that
# need a missing tool skip locally and fail under SWARMHUB_STRICT=1).
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "note: please install: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
fi
