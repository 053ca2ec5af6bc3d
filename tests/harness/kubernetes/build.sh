#!/usr/bin/env bash
# Build kube-apiserver, kube-scheduler and kube-controller-manager v1.20.2 from
# Debian's `kubernetes` source package, once, and cache the binaries in
#   ${XDG_CACHE_HOME:-$HOME/.cache}/atrium/kubernetes-v1.20.2/bin
#
# Contract:
#   - idempotent: when all three binaries are cached, it only checks that
#     etcd is installed and exits 0 (a few milliseconds);
#   - builds in a scratch directory outside the repository (removed on success
#     unless ATRIUM_K8S_KEEP_SCRATCH=1);
#   - installs etcd-server, golang-go and rsync from apt when missing (the
#     harness needs etcd at runtime, the build needs go and rsync);
#   - the deb-src list lives in a private apt directory, so the system's apt
#     configuration is left untouched;
#   - the cache is filled atomically (bin.tmp -> bin), so an interrupted build
#     never leaves a half-populated cache that later runs would trust.
# Takes ~6 minutes on 2 cores (kube-apiserver alone ~290 s).
set -euo pipefail

VERSION=v1.20.2
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/atrium/kubernetes-${VERSION}"
BIN_DIR="$CACHE_ROOT/bin"
COMPONENTS=(kube-apiserver kube-scheduler kube-controller-manager)

log() { printf '[k8s-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)

all_cached=1
for c in "${COMPONENTS[@]}"; do
    [[ -x "$BIN_DIR/$c" ]] || all_cached=0
done

if [[ $all_cached == 1 ]]; then
    if [[ ${#need_apt[@]} -gt 0 ]]; then
        log "installing ${need_apt[*]}"
        apt-get install -y --no-install-recommends "${need_apt[@]}" >/dev/null
    fi
    log "binaries cached in $BIN_DIR; nothing to build"
    exit 0
fi

command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
command -v rsync >/dev/null 2>&1 || need_apt+=(rsync)
if [[ ${#need_apt[@]} -gt 0 ]]; then
    log "installing ${need_apt[*]}"
    apt-get install -y --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The Debian mirror the machine already uses (deb822 .sources or one-line format).
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$f")
    [[ -n $mirror ]] && break
done
if [[ -z $mirror && -f /etc/apt/sources.list ]]; then
    mirror=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
fi
mirror=${mirror:-http://deb.debian.org/debian}
log "using Debian mirror $mirror"

SCRATCH="${ATRIUM_K8S_SCRATCH:-$(mktemp -d /tmp/atrium-k8s-build.XXXXXX)}"
mkdir -p "$SCRATCH"
log "scratch directory $SCRATCH"
cd "$SCRATCH"

mkdir -p apt/lists/partial apt/cache/archives/partial
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main" \
    > apt/src.list
AO=(-o "Dir::Etc::SourceList=$SCRATCH/apt/src.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$SCRATCH/apt/lists" -o "Dir::Cache=$SCRATCH/apt/cache")

if ! ls kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
    log "fetching the kubernetes source package"
    apt-get "${AO[@]}" update >/dev/null
    apt-get "${AO[@]}" source --download-only kubernetes >/dev/null
fi
orig=$(ls kubernetes_*.orig.tar.gz | head -n1)
log "source: $orig"

if [[ ! -f src/Makefile ]]; then
    log "unpacking"
    rm -rf src && mkdir -p src
    tar xzf "$orig" -C src --strip-components=1
fi
cd src

export GOPATH="$PWD/.go" GOCACHE="$SCRATCH/gocache" CGO_ENABLED=0 \
    KUBE_GIT_VERSION="$VERSION" KUBE_GIT_TREE_STATE=clean GOFLAGS=
mkdir -p .go/src/k8s.io
[[ -e .go/src/k8s.io/kubernetes ]] || ln -s ../../.. .go/src/k8s.io/kubernetes

for c in "${COMPONENTS[@]}"; do
    if [[ -x _output/bin/$c ]]; then
        log "$c already built"
        continue
    fi
    note=""
    [[ $c == kube-apiserver ]] && note=" (the longest: ~5-7 min)"
    log "building $c$note"
    start=$SECONDS
    make WHAT="cmd/$c" >"$SCRATCH/make-$c.log" 2>&1 || {
        log "make $c failed; last lines of $SCRATCH/make-$c.log:"
        tail -n 30 "$SCRATCH/make-$c.log" >&2
        exit 1
    }
    log "$c built in $((SECONDS - start)) s"
done

mkdir -p "$CACHE_ROOT"
rm -rf "$CACHE_ROOT/bin.tmp"
mkdir "$CACHE_ROOT/bin.tmp"
for c in "${COMPONENTS[@]}"; do
    cp "_output/bin/$c" "$CACHE_ROOT/bin.tmp/$c"
done
rm -rf "$BIN_DIR"
mv "$CACHE_ROOT/bin.tmp" "$BIN_DIR"
"$BIN_DIR/kube-apiserver" --version >&2
log "binaries cached in $BIN_DIR"

if [[ ${ATRIUM_K8S_KEEP_SCRATCH:-0} != 1 && -z ${ATRIUM_K8S_SCRATCH:-} ]]; then
    cd /
    rm -rf "$SCRATCH"
    log "scratch directory removed"
fi
