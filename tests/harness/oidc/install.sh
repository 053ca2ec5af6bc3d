#!/usr/bin/env bash
# Install the test OpenID Connect provider (npm `oidc-provider`) into a cache dir OUTSIDE
# the repo, keyed on package.json + package-lock.json (so a version bump installs afresh).
#
# Contract:
#   * idempotent and fast when up to date (no network then);
#   * prints the install dir as its LAST line of stdout (callers `tail -1`); the provider
#     script is run with that dir as ATRIUM_OIDC_MODULES;
#   * progress goes to stderr; an interrupted install is redone (the stamp is written last);
#   * exits non-zero (with npm's output) when node/npm are missing or the install fails.
# Env: XDG_CACHE_HOME (cache root), ATRIUM_OIDC_PROVIDER_DIR (override the install dir).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
key="$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -c1-12)"
dir="${ATRIUM_OIDC_PROVIDER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/atrium/oidc-provider-$key}"

log() { printf '[oidc-install] %s\n' "$*" >&2; }

for tool in node npm; do
  command -v "$tool" >/dev/null || { log "$tool is not installed (Node.js 20+ is needed)"; exit 1; }
done

mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9  # two test runs installing at once must not share the temp dir
if [[ ! -f "$dir/.installed" ]]; then
  log "installing oidc-provider into $dir"
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp"
  cp "$here/package.json" "$here/package-lock.json" "$dir.tmp/"
  if ! (cd "$dir.tmp" && npm ci --omit=dev --no-audit --no-fund --loglevel=error \
        >"$dir.tmp/npm.log" 2>&1); then
    cat "$dir.tmp/npm.log" >&2
    exit 1
  fi
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
  touch "$dir/.installed"
fi
echo "$dir/node_modules"
