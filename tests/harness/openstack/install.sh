#!/usr/bin/env bash
# Install the OpenStack test cloud (Keystone, Glance, Placement, Neutron, Nova) into a venv
# cached OUTSIDE the repo, plus Atrium's harness plugins (the agentless ML2 driver).
#
# Contract:
#   * idempotent: does nothing when the venv exists and was built from the same package
#     list and interpreter (stamp = sha256 of both); re-installs only the plugin package when the plugins
#     changed (stamp = sha256 of plugins/ sources);
#   * prints the venv path as its LAST line of stdout, so callers can `tail -1`;
#   * progress goes to stderr; an interrupted build is redone (the stamp is written last);
#   * one install at a time (flock on <venv>.lock).
# Env: XDG_CACHE_HOME (cache root), ATRIUM_OPENSTACK_VENV (override the venv path),
#      ATRIUM_PYTHON (interpreter for the venv, default python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${ATRIUM_OPENSTACK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/atrium/openstack-venv}"
python="${ATRIUM_PYTHON:-python3}"

log() { printf '[openstack-install %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# Versions proven together on Python 3.11 (nova 34 / Epoxy-era release train).
PACKAGES=(
  "keystone==30.*"
  "nova==34.*"
  "openstack-placement==16.*"
  "glance==33.*"
  "neutron==29.*"
  "openstacksdk"
  "gunicorn"
  "psycopg2-binary"
)

# Keyed on what determines the venv's content (package specs + interpreter), not on comments.
base_hash="$( { printf '%s\n' "${PACKAGES[@]}"; "$python" -VV; } | sha256sum | cut -c1-16)"
# Only the pip-installed plugin package; plugins/novavirt is loaded from the tree at run time.
plugin_hash="$(cd "$here/plugins" && find pyproject.toml atrium_oslab -type f \( -name '*.py' -o -name '*.toml' \) \
  -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9  # two test runs (or ./dev and a test) installing at once must not share the venv

if [[ -f "$venv/.atrium-base-hash" && "$(cat "$venv/.atrium-base-hash")" == "$base_hash" ]]; then
  log "services venv up to date ($venv)"
else
  # Built in place; the stamp is written last, so an interrupted build is redone from scratch.
  log "creating services venv in $venv (~1 min, ~650 MB)"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip setuptools wheel 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
  log "installing ${PACKAGES[*]}"
  # (drop pip's noise about this machine's unused local find-links; pipefail keeps errors)
  "$venv/bin/pip" install -q --disable-pip-version-check "${PACKAGES[@]}" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
  rm -f "$venv/.atrium-plugin-hash"
  echo "$base_hash" > "$venv/.atrium-base-hash"
  log "services venv ready"
fi

if [[ -f "$venv/.atrium-plugin-hash" && "$(cat "$venv/.atrium-plugin-hash")" == "$plugin_hash" ]]; then
  log "harness plugins up to date"
else
  log "installing harness plugins from $here/plugins"
  build="$(mktemp -d)"
  cp -r "$here/plugins/." "$build/"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall \
    --no-build-isolation "$build" >&2
  rm -rf "$build"
  echo "$plugin_hash" > "$venv/.atrium-plugin-hash"
  log "harness plugins installed"
fi

"$venv/bin/python" - <<'EOF' >&2
import importlib.metadata as md
print("  " + ", ".join(f"{p} {md.version(p)}" for p in
      ("keystone", "nova", "openstack-placement", "glance", "neutron", "atrium-oslab")))
EOF
echo "$venv"
