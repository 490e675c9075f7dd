#!/usr/bin/env bash
# Installs the Debian/Ubuntu shared libraries Qt needs (offscreen too), when they are missing.
# Does nothing when they are present; without root or apt it only warns.
set -u
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: cannot install ${missing[*]} (no apt-get); the Qt app and its tests may not start" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing system packages for Qt: ${missing[*]}"
$SUDO apt-get update -qq >/dev/null 2>&1 || true
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || echo "note: apt-get could not install ${missing[*]}; the Qt app and its tests may not start" >&2
exit 0
