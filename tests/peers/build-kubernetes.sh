#!/usr/bin/env bash
# build-kubernetes.sh: build a pinned Kubernetes control plane and kine from the Go module proxy.
#
# Why: the shim exists for kube-apiserver, so the tests (issue 14) run a real kube-apiserver,
# kube-controller-manager and kube-scheduler on it and on a real etcd, and the benchmark sets
# kine beside them. There are no release binaries to download here, only the Go module proxy;
# this script builds the binaries from it, once per version.
#
# What:
#   - Kubernetes ${KUBERNETES_VERSION}: kube-apiserver, kube-controller-manager, kube-scheduler
#     (no kubectl: the tests speak the API's HTTP themselves). `go install
#     k8s.io/kubernetes/cmd/...@vX` is refused (kubernetes' go.mod replaces
#     its staging modules with local folders), so the build runs in a wrapper module that
#     requires k8s.io/kubernetes and replaces every staging module named in kubernetes' own
#     go.mod (read from the module cache, never a hard-coded list) with the same module at
#     v0.<minor>.<patch>. The version ldflags are set, so `kube-apiserver --version` and
#     /version report the real version (unset, they say v0.0.0-master).
#   - kine ${KINE_VERSION} (k3s' etcd shim, for the side-by-side benchmark): `go install` of its
#     module at the tag. Built without cgo by default, so its SQLite is modernc.org/sqlite (the
#     pure-Go driver of upstream's kine-nocgo); KINE_CGO=1 builds upstream's cgo flavour
#     (mattn/go-sqlite3, needs a C compiler) into a separate cache folder.
#   - All binaries: CGO_ENABLED=0 (kine: see above), -trimpath, -ldflags '-s -w'.
#
# Cache: ${COSMOS_ETCD_PEERS_CACHE:-$HOME/.cache/cosmos-etcd-peers}/kubernetes-<version>/bin and
# kine-<version>/bin. A stamp file, written last, marks a finished build; a run that finds it
# exits at once, so a second run costs nothing. A lock serialises concurrent runs. Go's own
# caches (GOMODCACHE, GOCACHE) are whatever `go env` says; point them at a scratch folder and
# delete it afterwards if only the binaries should stay.
#
# Usage: tests/peers/build-kubernetes.sh [--env-file PATH] [kubernetes] [kine]
#   With no component named, both are built. Progress and timings go to stderr; stdout gets
#   shell-sourceable lines (also written to PATH with --env-file), e.g.
#     KUBERNETES_VERSION=v1.36.5
#     KUBERNETES_BIN=<cache>/kubernetes-v1.36.5/bin
#     KINE_VERSION=v0.17.5
#     KINE_BIN=<cache>/kine-v0.17.5/bin
#
# Cost, measured on 2 cores with Go 1.26.8 and empty GOMODCACHE/GOCACHE:
#   Kubernetes: download 12-17 s (GOMODCACHE +768 MB, of which 153 MB zips), compile 397 s
#   (GOCACHE +3.0 GB), 414 s in all; the cache folder holds 319 MB of binaries. With warm Go
#   caches and no binaries: 10 s (24 s with an empty GOMODCACHE).
#   kine: 124 s in all, of which about 103 s compile (GOMODCACHE +785 MB, GOCACHE +619 MB,
#   binary 40 MB). A second run: under 10 ms.
# Versions: v1.36.5 is the newest 1.36.x the proxy serves here (v1.36.6 and later: 403 Forbidden).
# Two of its 33 staging modules are not served at v0.36.5: k8s.io/sample-cli-plugin and
# k8s.io/sample-controller. No package of the four commands imports them, so the go command never
# fetches them and their replace lines are harmless.

set -euo pipefail

KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.36.5}"
KINE_VERSION="${KINE_VERSION:-v0.17.5}"

KUBERNETES_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler)
CACHE_ROOT="${COSMOS_ETCD_PEERS_CACHE:-$HOME/.cache/cosmos-etcd-peers}"
KINE_CGO="${KINE_CGO:-0}"

log() { printf '[build-kubernetes] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

env_file=""
want_kubernetes=0
want_kine=0
while (($#)); do
    case "$1" in
        --env-file) env_file="${2:?--env-file needs a path}"; shift 2 ;;
        kubernetes) want_kubernetes=1; shift ;;
        kine) want_kine=1; shift ;;
        -h|--help) sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done
if ((want_kubernetes == 0 && want_kine == 0)); then
    want_kubernetes=1
    want_kine=1
fi

command -v go >/dev/null || die "go is not on PATH"
export CGO_ENABLED=0
export GOWORK=off
export GOFLAGS="${GOFLAGS:-} -modcacherw"

mkdir -p "$CACHE_ROOT"

# True when the stamp and every named binary of a cache folder are there.
is_built() {
    local dir="$1"; shift
    [[ -f "$dir/.stamp" ]] || return 1
    local b
    for b in "$@"; do [[ -x "$dir/bin/$b" ]] || return 1; done
}

build_kubernetes() {
    local version="$KUBERNETES_VERSION"
    [[ "$version" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "KUBERNETES_VERSION must look like v1.36.5"
    local minor="${BASH_REMATCH[1]}" staging_version="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
    local dest="$CACHE_ROOT/kubernetes-$version"
    is_built "$dest" "${KUBERNETES_COMMANDS[@]}" && return 0

    exec 8>"$CACHE_ROOT/.lock-kubernetes-$version"
    flock 8
    if is_built "$dest" "${KUBERNETES_COMMANDS[@]}"; then exec 8>&-; return 0; fi

    log "building Kubernetes $version into $dest (cold: several minutes)"
    local work
    work="$(mktemp -d "$CACHE_ROOT/.kubernetes-$version.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    cd "$work"

    local t0 t1 t2 t3
    t0="$(now)"
    # kubernetes' own go.mod: its replace lines `k8s.io/X => ./staging/src/k8s.io/X` name the
    # staging modules.
    local info gomod
    info="$(go mod download -json "k8s.io/kubernetes@$version")" \
        || die "go mod download k8s.io/kubernetes@$version failed: $info"
    gomod="$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"$info")"
    [[ -f "$gomod" ]] || die "no go.mod in: $info"
    local build_date
    build_date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' \
        "$(sed -n 's/^[[:space:]]*"Info": "\(.*\)",\{0,1\}$/\1/p' <<<"$info")")"
    local -a staging
    mapfile -t staging < <(awk '$2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }' "$gomod" | sort -u)
    ((${#staging[@]} > 0)) || die "no staging modules found in $gomod"
    log "kubernetes' go.mod names ${#staging[@]} staging modules; pinning them to $staging_version"

    # The wrapper module. The go command fetches a replaced module only if a built package
    # imports it, so a staging module the proxy does not serve (the sample-* ones) does no harm
    # here; one the build needs makes `go mod tidy` fail with its name and version.
    {
        printf 'module cosmos-etcd-peers/kubernetes-build\n\ngo 1.26.0\n\n'
        printf 'require k8s.io/kubernetes %s\n\n' "$version"
        printf 'tool (\n'
        local c m
        for c in "${KUBERNETES_COMMANDS[@]}"; do printf '\tk8s.io/kubernetes/cmd/%s\n' "$c"; done
        printf ')\n\nreplace (\n'
        for m in "${staging[@]}"; do printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"; done
        printf ')\n'
    } >"$work/go.mod.new"
    mv "$work/go.mod.new" "$work/go.mod"

    # Download: resolve the module graph and fetch every module the four commands need.
    go mod tidy || die "go mod tidy failed in the wrapper module $work"
    t1="$(now)"
    log "download and resolution: $(elapsed "$t0" "$t1") s"

    local pkg="k8s.io/component-base/version" cgv="k8s.io/client-go/pkg/version" ldflags="-s -w"
    local kv
    for kv in "gitVersion=$version" "gitMajor=1" "gitMinor=$minor" "gitTreeState=archive" \
              "gitCommit=" "buildDate=$build_date"; do
        ldflags+=" -X $pkg.$kv -X $cgv.$kv"
    done
    local -a pkgs=()
    for c in "${KUBERNETES_COMMANDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    mkdir -p "$work/bin"
    go build -trimpath -ldflags="$ldflags" -o "$work/bin/" "${pkgs[@]}" \
        || die "go build failed"
    t2="$(now)"
    log "compile: $(elapsed "$t1" "$t2") s"

    "$work/bin/kube-apiserver" --version | grep -qx "Kubernetes $version" \
        || die "kube-apiserver --version says: $("$work/bin/kube-apiserver" --version)"

    rm -rf "$dest"
    mkdir -p "$dest"
    mv "$work/bin" "$dest/bin"
    mkdir -p "$dest/wrapper"
    cp "$work/go.mod" "$work/go.sum" "$dest/wrapper/"
    t3="$(now)"
    {
        printf 'version=%s\nstaging_version=%s\ngo=%s\nbuilt=%s\n' \
            "$version" "$staging_version" "$(go env GOVERSION)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        printf 'download_seconds=%s\ncompile_seconds=%s\n' "$(elapsed "$t0" "$t1")" "$(elapsed "$t1" "$t2")"
    } >"$dest/.stamp.new"
    mv "$dest/.stamp.new" "$dest/.stamp"
    cd /
    rm -rf "$work"
    trap - EXIT
    exec 8>&-
    log "Kubernetes $version ready in $(elapsed "$t0" "$t3") s: $(du -sh "$dest" | cut -f1) in $dest"
}

build_kine() {
    local version="$KINE_VERSION" suffix="" cgo=0
    if [[ "$KINE_CGO" == 1 ]]; then suffix="-cgo"; cgo=1; fi
    local dest="$CACHE_ROOT/kine-$version$suffix"
    is_built "$dest" kine && return 0

    exec 7>"$CACHE_ROOT/.lock-kine-$version$suffix"
    flock 7
    if is_built "$dest" kine; then exec 7>&-; return 0; fi

    log "building kine $version$suffix into $dest"
    local t0 t1 work
    t0="$(now)"
    work="$(mktemp -d "$CACHE_ROOT/.kine-$version.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    cd "$work"
    local ldflags="-s -w -X github.com/k3s-io/kine/pkg/version.Version=$version"
    ldflags+=" -X github.com/k3s-io/kine/pkg/version.GitCommit="
    local -a tags=()
    if ((cgo)); then
        # upstream's scripts/build: its SQLite tags and CFLAGS (without the embedded NATS server)
        tags=(-tags "sqlite_unlock_notify,sqlite_vtable,sqlite_stat4,sqlite_preupdate_hook,sqlite_math_functions,sqlite_dbstat,sqlite_column_metadata")
        export CGO_CFLAGS="-DSQLITE_DEFAULT_MEMSTATUS=0 -DSQLITE_DISABLE_INTRINSIC -DSQLITE_ENABLE_COLUMN_METADATA -DSQLITE_ENABLE_DBPAGE_VTAB -DSQLITE_ENABLE_DBSTAT_VTAB -DSQLITE_ENABLE_MATH_FUNCTIONS -DSQLITE_ENABLE_MEMORY_MANAGEMENT -DSQLITE_ENABLE_OFFSET_SQL_FUNC -DSQLITE_ENABLE_PREUPDATE_HOOK -DSQLITE_ENABLE_RBU -DSQLITE_ENABLE_RTREE -DSQLITE_ENABLE_SESSION -DSQLITE_ENABLE_SNAPSHOT -DSQLITE_ENABLE_STAT4 -DSQLITE_ENABLE_UNLOCK_NOTIFY -DSQLITE_LIKE_DOESNT_MATCH_BLOBS -DSQLITE_THREADSAFE=1 -DSQLITE_WITHOUT_ZONEMALLOC"
    fi
    mkdir -p "$work/bin"
    CGO_ENABLED="$cgo" GOBIN="$work/bin" \
        go install -trimpath -ldflags="$ldflags" "${tags[@]}" "github.com/k3s-io/kine@$version" \
        || die "go install github.com/k3s-io/kine@$version failed"
    t1="$(now)"
    rm -rf "$dest"
    mkdir -p "$dest"
    mv "$work/bin" "$dest/bin"
    printf 'version=%s\ncgo=%s\ngo=%s\nbuilt=%s\nbuild_seconds=%s\n' "$version" "$cgo" \
        "$(go env GOVERSION)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(elapsed "$t0" "$t1")" >"$dest/.stamp.new"
    mv "$dest/.stamp.new" "$dest/.stamp"
    cd /
    rm -rf "$work"
    trap - EXIT
    exec 7>&-
    log "kine $version$suffix ready in $(elapsed "$t0" "$t1") s: $(du -sh "$dest" | cut -f1) in $dest"
}

kine_suffix=""
if [[ "$KINE_CGO" == 1 ]]; then kine_suffix="-cgo"; fi
out=""
if ((want_kubernetes)); then
    (build_kubernetes)
    out+="KUBERNETES_VERSION=$KUBERNETES_VERSION"$'\n'
    out+="KUBERNETES_BIN=$CACHE_ROOT/kubernetes-$KUBERNETES_VERSION/bin"$'\n'
fi
if ((want_kine)); then
    (build_kine)
    out+="KINE_VERSION=$KINE_VERSION"$'\n'
    out+="KINE_BIN=$CACHE_ROOT/kine-$KINE_VERSION$kine_suffix/bin"$'\n'
fi
printf '%s' "$out"
if [[ -n "$env_file" ]]; then
    printf '%s' "$out" >"$env_file.tmp.$$"
    mv "$env_file.tmp.$$" "$env_file"
fi
