#!/usr/bin/env bash
# Build (or reuse) the test control plane's binaries: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler (from go/, pinned by versions.env) and kwok; or, with
# the argument `helm`, Helm; or, with `prometheus`, Prometheus and promtool.
#
# Binaries live outside the clone in a directory keyed by the pins, so every clone and every CI
# run on a warm machine reuses them; they are rebuilt only when that directory is incomplete.
# The only line on stdout is the binary directory; progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly

components=(etcd kube-apiserver kube-controller-manager kube-scheduler)

if ! command -v go >/dev/null; then
    echo "tests/cluster needs the Go toolchain on PATH (go/go.mod says which version)" >&2
    exit 1
fi

cache="${STUDBOOK_CACHE:-$HOME/.cache/studbook}"

# `go install` of tools into a staging directory beside DIR, then publish_staged DIR swaps it in:
# an interrupted build leaves DIR as it was.
go_install_staged() {
    local dir=$1 ldflags=$2
    shift 2
    mkdir -p "$(dirname "$dir")"
    staging=$(mktemp -d "$dir.tmp.XXXXXX")
    trap 'rm -rf "$staging"' EXIT
    GOBIN="$staging" GOFLAGS= go install -trimpath -ldflags "$ldflags" "$@"
}
publish_staged() {
    rm -rf "$1"
    mv "$staging" "$1"
    trap - EXIT
}

if [[ "${1:-}" == helm ]]; then
    helm_dir="$cache/helm/${HELM_VERSION}_$(go env GOVERSION)"
    if [[ ! -x "$helm_dir/helm" ]]; then
        echo "building helm $HELM_VERSION into $helm_dir" >&2
        go_install_staged "$helm_dir" "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
        publish_staged "$helm_dir"
    fi
    echo "$helm_dir"
    exit 0
fi
if [[ "${1:-}" == prometheus ]]; then
    prom_dir="$cache/prometheus/${PROMETHEUS_VERSION}_$(go env GOVERSION)"
    if [[ ! -f "$prom_dir/.complete" ]]; then
        echo "building prometheus $PROMETHEUS_VERSION into $prom_dir" >&2
        start=$(date +%s)
        # The Go module v0.3MM.P is Prometheus 3.MM.P; stamped so `--version` names the release.
        minor=${PROMETHEUS_VERSION#v0.3}
        minor=$((10#${minor%%.*}))
        release="3.$minor.${PROMETHEUS_VERSION##*.}"
        build_date=$(GOFLAGS= go list -m -f '{{.Time.UTC.Format "20060102-15:04:05"}}' \
            "github.com/prometheus/prometheus@$PROMETHEUS_VERSION")
        pkg=github.com/prometheus/common/version
        ldflags="-s -w -X $pkg.Version=$release -X $pkg.Branch=HEAD -X $pkg.BuildUser=studbook"
        ldflags+=" -X $pkg.BuildDate=$build_date"
        # No builtinassets tag: the web UI is left out, the HTTP API is all the tests use.
        go_install_staged "$prom_dir" "$ldflags" \
            "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" \
            "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
        for bin in prometheus promtool; do
            [[ -x "$staging/$bin" ]] || { echo "missing $bin after build" >&2; exit 1; }
        done
        printf 'prometheus=%s release=%s go=%s seconds=%s\n' "$PROMETHEUS_VERSION" "$release" \
            "$(go env GOVERSION)" "$(($(date +%s) - start))" >"$staging/.complete"
        publish_staged "$prom_dir"
        echo "built in $(($(date +%s) - start)) s" >&2
    fi
    echo "$prom_dir"
    exit 0
fi

pinned=$(cd "$here/go" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
if [[ "$pinned" != "$K8S_VERSION" ]]; then
    echo "go/go.mod pins k8s.io/kubernetes $pinned but versions.env says $K8S_VERSION;" \
        "run tests/cluster/go/gen-gomod.sh" >&2
    exit 1
fi

# The key names the pins readably; the hash covers the module files and mains, so an edit to
# them cannot silently reuse binaries built from something else.
src_hash=$(cd "$here/go" && cat go.mod go.sum cmd/*/main.go | sha256sum | cut -c1-12)
key="k8s-${K8S_VERSION}_kwok-${KWOK_VERSION}_$(go env GOVERSION)_${src_hash}"
bin_dir="$cache/cluster-bin/$key"

if [[ -f "$bin_dir/.complete" ]]; then
    echo "$bin_dir"
    exit 0
fi

echo "building control-plane binaries into $bin_dir (cold builds take a while)" >&2
mkdir -p "$(dirname "$bin_dir")"
staging=$(mktemp -d "$bin_dir.tmp.XXXXXX")
trap 'rm -rf "$staging"' EXIT
start=$(date +%s)

# Version stamps make the binaries report the release (tools parse these), not v0.0.0-master.
minor=${K8S_VERSION#v1.}
minor=${minor%%.*}
# The release's publication time, not now: rebuilding the same pins gives the same stamps.
build_date=$(cd "$here/go" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' \
    k8s.io/kubernetes)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

# One go build for all four mains: shared packages compile once and the links run in parallel.
(cd "$here/go" && go build -trimpath -ldflags "$ldflags" -o "$staging/" \
    "${components[@]/#/./cmd/}")
GOBIN="$staging" GOFLAGS= go install -trimpath -ldflags "-s -w" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"

for bin in "${components[@]}" kwok; do
    [[ -x "$staging/$bin" ]] || { echo "missing $bin after build" >&2; exit 1; }
done
printf 'k8s=%s kwok=%s go=%s seconds=%s\n' "$K8S_VERSION" "$KWOK_VERSION" \
    "$(go env GOVERSION)" "$(($(date +%s) - start))" >"$staging/.complete"
rm -rf "$bin_dir"
mv "$staging" "$bin_dir"
trap - EXIT
echo "built in $(($(date +%s) - start)) s" >&2
echo "$bin_dir"
