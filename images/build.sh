#!/usr/bin/env bash
# Builds Studbook's two images without a daemon (podman with runc; no registry needed):
#   base      Debian bookworm from Debian's own packages (mmdebstrap), with Python 3.11
#   deps      the base plus exactly the lock's versions of one image's dependencies
#   operator  `studbook operator` (no ML stack)         localhost/studbook-operator:VERSION
#   trainer   the breed and evaluate steps (torch)      localhost/studbook-trainer:VERSION
# Each layer is tagged by the hash of what goes into it and kept in podman's storage, outside
# the clone: a warm machine builds neither the base nor the dependencies again, only the thin
# source layer. What was built is written to images/built.json (references, ids, digests).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${STUDBOOK_CACHE:-$HOME/.cache/studbook}
UV_VERSION=${UV_VERSION:-0.13.8}
UV_DIR=$CACHE/uv-$UV_VERSION/bin
LOCK=requirements/dev.lock
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
# What the base holds: Python, the C++ runtime torch links against, and the CA bundle (for S3
# and GCS over TLS); nothing else.
BASE_PACKAGES=python3.11,libpython3.11-stdlib,python-is-python3,libstdc++6,ca-certificates
BASE_RECIPE="$SUITE $MIRROR $BASE_PACKAGES essential nodocs passwd-65532 v1"
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' operator/studbook/__init__.py)
SOURCE=${STUDBOOK_IMAGE_SOURCE:-https://github.com/studbook/studbook}
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- operator trainer-image images 2>/dev/null || REVISION="$REVISION-dirty"

log() { printf '[images] %s\n' "$*" >&2; }
key() { sha256sum | cut -c1-16; }

# podman as these machines need it: runc with the cgroupfs manager, explicit ulimits.
podman_() { podman --runtime "$(command -v runc)" --cgroup-manager cgroupfs "$@"; }
ULIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

need_tools() {
  local missing=()
  for tool in podman runc mmdebstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap >/dev/null
  else
    log "missing ${missing[*]}: install podman, runc and mmdebstrap (Debian packages)"
    exit 1
  fi
}

exists() { podman_ image exists "$1"; }

build_base() {
  local ref=$1 tar
  tar=$(mktemp --suffix=.tar)
  log "base $ref: mmdebstrap $SUITE ($BASE_PACKAGES)"
  # A fixed timestamp and no docs: the same packages give the same tarball.
  SOURCE_DATE_EPOCH=1700000000 mmdebstrap --quiet --variant=essential \
    --include="$BASE_PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='echo "studbook:x:65532:65532:studbook:/tmp:/usr/sbin/nologin" >> "$1/etc/passwd"' \
    --customize-hook='echo "studbook:x:65532:" >> "$1/etc/group"' \
    --customize-hook='chroot "$1" dpkg-query -W > "$1/etc/studbook-base-packages.txt"' \
    "$SUITE" "$tar" "$MIRROR" >&2
  podman_ import --quiet --change 'CMD ["python3"]' \
    --change "LABEL dev.studbook.base-recipe=\"$BASE_RECIPE\"" "$tar" "$ref" >/dev/null
  rm -f "$tar"
}

build_deps() {
  local ref=$1 base=$2 extras=$3
  log "dependencies $ref: extras '$extras' at the lock's versions"
  podman_ build --quiet "${ULIMITS[@]}" --network host --layers=false \
    -v "$PWD:/src:ro" -v "$UV_DIR:/opt/uv:ro" -v "$CACHE/uv-cache:/uv-cache" \
    -v "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}:/opt/build-ca.crt:ro" \
    --build-arg BASE="$base" --build-arg EXTRAS="$extras" \
    -f images/deps.Containerfile -t "$ref" images >/dev/null
}

build_app() {
  local name=$1 deps=$2 ref=localhost/studbook-$1:$VERSION
  log "$ref on $deps"
  podman_ build --quiet "${ULIMITS[@]}" --network none \
    --build-arg DEPS="$deps" --build-arg SOURCE="$SOURCE" --build-arg REVISION="$REVISION" \
    --build-arg VERSION="$VERSION" --build-arg LOCK_HASH="$LOCK_HASH" \
    -f "images/$name.Containerfile" -t "$ref" . >/dev/null
}

need_tools
[ -x "$UV_DIR/uv" ] || { log "uv $UV_VERSION is missing: run make venv first"; exit 1; }
mkdir -p "$CACHE/uv-cache"

LOCK_HASH=$(sha256sum "$LOCK" | cut -c1-16)
BASE_KEY=$(echo "$BASE_RECIPE" | key)
BASE=localhost/studbook-base:$SUITE-$BASE_KEY
exists "$BASE" || build_base "$BASE"

# The dependency layers: keyed by the lock, the project's dependency lists, the recipe and the
# base. Source changes never rebuild them.
PROJECT_DEPS=$(python3 -c 'import tomllib, json; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(json.dumps([p["dependencies"], p["optional-dependencies"]], sort_keys=True))')
declare -A EXTRAS=([operator]="cloud" [trainer]="cloud trainer")
declare -A DEPS
for name in operator trainer; do
  deps_key=$( (cat "$LOCK" images/deps.Containerfile images/check_lock.py; \
    echo "$PROJECT_DEPS ${EXTRAS[$name]} $BASE") | key)
  DEPS[$name]=localhost/studbook-$name-deps:$deps_key
  exists "${DEPS[$name]}" || build_deps "${DEPS[$name]}" "$BASE" "${EXTRAS[$name]}"
done

for name in operator trainer; do build_app "$name" "${DEPS[$name]}"; done

# Layers of earlier locks or recipes, and the untagged images rebuilds leave, are only disk use
# (the trainer's dependencies are gigabytes): keep the current ones.
keep=" $BASE ${DEPS[operator]} ${DEPS[trainer]} "
podman_ images --format '{{.Repository}}:{{.Tag}}' \
  | grep -E '^localhost/studbook-(base|operator-deps|trainer-deps):' \
  | while read -r ref; do
      [[ "$keep" == *" $ref "* ]] || { log "removing stale $ref"; podman_ rmi "$ref" >/dev/null || true; }
    done
podman_ image prune --force >/dev/null

python3 - "$VERSION" > images/built.json <<'PY'
import json, subprocess, sys, shutil
version = sys.argv[1]
runc = shutil.which("runc")
out = {}
for name in ("operator", "trainer"):
    ref = f"localhost/studbook-{name}:{version}"
    info = json.loads(subprocess.check_output(
        ["podman", "--runtime", runc, "--cgroup-manager", "cgroupfs", "image", "inspect", ref]))[0]
    out[name] = {"ref": ref, "id": "sha256:" + info["Id"], "digest": info["Digest"],
                 "pinned": ref.rsplit(":", 1)[0] + "@" + info["Digest"],
                 "size": info["Size"], "labels": info["Labels"]}
print(json.dumps(out, indent=2, sort_keys=True))
PY
log "built: $(python3 -c 'import json; d = json.load(open("images/built.json")); print(", ".join("%s %.0f MB" % (v["ref"], v["size"] / 1e6) for v in d.values()))')"
