#!/usr/bin/env bash
# Build the Docker image without a Docker engine (buildah, chroot isolation), run its CMD, and check that its
# HEALTHCHECK and a real prediction pass; then stop it. Prints build time, image size and start-up time.
#
#   tools/build_image.sh [IMAGE_FILE]    # IMAGE_FILE: the X-ray to POST (default: the first test-split image)
#
# Environment (all optional):
#   BASE_IMAGE       the Dockerfile's base; default: a Debian bookworm minbase with python3 (3.11), made once with
#                    mmdebstrap and imported as localhost/pneumo-base:bookworm
#   TORCH_INDEX_URL  where pip finds torch; default: the PyTorch CPU index
#   TAG              the image's name (default localhost/pneumo:local)
#   PORT             the port the CMD serves on (default 8000, as in the Dockerfile)
#   KEEP_IMAGE=1     keep the image afterwards (default: removed, it is several GB)
#   SKIP_BUILD=1     run and check an image built before (TAG) instead of building it
#   BUILD_PIP_CONF   a pip.conf for the build's RUN steps (mounted as root's user pip config instead of ~/.config/pip)
# This machine's pip configuration, CA bundle and local wheel folders are mounted read-only into the build's RUN
# steps when they exist (/etc/pip.conf, /etc/xdg/pip, ~/.config/pip, /opt/pypi*, /opt/wheels, /etc/ssl/certs).
# Needs root, buildah and podman; mmdebstrap for the default base. Slow (minutes): not part of the test suite.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
TAG=${TAG:-localhost/pneumo:local}
PORT=${PORT:-8000}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
WORK=${WORK:-${TMPDIR:-/tmp}/pneumo-image}
DATA=${PNEUMO_DATA:-$REPO/../shared/data/chest_xray}
IMAGE_FILE=${1:-$(find "$DATA/test/PNEUMONIA" -name '*.jpeg' 2>/dev/null | sort | head -n 1 || true)}
STARTUP_LIMIT_S=${STARTUP_LIMIT_S:-300}
mkdir -p "$WORK"

log() { printf '[build_image] %s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null || { log "missing: $1 (apt-get install $2)"; exit 2; }; }
need buildah buildah
need podman podman
need curl curl
need bc bc
need python3 python3
[ -f "$IMAGE_FILE" ] || { log "no X-ray to post: pass one as the first argument"; exit 2; }
if curl -s -o /dev/null "http://127.0.0.1:$PORT/"; then
    log "port $PORT is already in use: set PORT"; exit 2
fi

if [ -z "${BASE_IMAGE:-}" ]; then
    BASE_IMAGE=localhost/pneumo-base:bookworm
    if ! podman image exists "$BASE_IMAGE"; then
        need mmdebstrap mmdebstrap
        log "making $BASE_IMAGE with mmdebstrap"
        mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$WORK/base.tar"
        podman import "$WORK/base.tar" "$BASE_IMAGE"
        rm -f "$WORK/base.tar"
    fi
fi

mounts=()
for path in /etc/pip.conf /etc/xdg/pip /opt/pypi /opt/pypi-more /opt/wheels /etc/ssl/certs; do
    if [ -e "$path" ]; then mounts+=(-v "$path:$path:ro"); fi
done
if [ -n "${BUILD_PIP_CONF:-}" ]; then
    mounts+=(-v "$(realpath "$BUILD_PIP_CONF"):/root/.config/pip/pip.conf:ro")
elif [ -e "$HOME/.config/pip" ]; then
    mounts+=(-v "$HOME/.config/pip:/root/.config/pip:ro")
fi

build_s=0
if [ "${SKIP_BUILD:-0}" = 1 ]; then
    log "using the image built before: $TAG"
else
log "building $TAG from $BASE_IMAGE (torch from $TORCH_INDEX_URL)"
build_start=$(date +%s.%N)
buildah bud --isolation=chroot --format docker --layers=false --pull=never \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL" \
    --build-arg "PNEUMO_COMMIT=$(git -C "$REPO" describe --always --dirty --abbrev=7 2>/dev/null || true)" \
    "${mounts[@]}" -t "$TAG" -f "$REPO/Dockerfile" "$REPO" >"$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log" >&2; log "build failed (full log: $WORK/build.log)"; exit 1; }
build_s=$(echo "$(date +%s.%N) - $build_start" | bc)
fi
size=$(podman image inspect --format '{{.Size}}' "$TAG")
log "built in ${build_s}s, image size $size bytes"

# What the image says to run and how it checks its health (Docker format keeps the HEALTHCHECK).
buildah inspect --type image "$TAG" >"$WORK/image.json"
mapfile -t cmd < <(python3 -c 'import json, sys; print(*json.load(sys.stdin)["Docker"]["config"]["Cmd"], sep="\n")' \
    <"$WORK/image.json")
mapfile -t health < <(python3 -c 'import json, sys; test = json.load(sys.stdin)["Docker"]["config"]["Healthcheck"]["Test"]
assert test[0] == "CMD", test
print(*test[1:], sep="\n")' <"$WORK/image.json")
log "CMD: ${cmd[*]}"

container=$(buildah from --pull=never "$TAG")
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    buildah rm "$container" >/dev/null 2>&1 || true
    if [ "${KEEP_IMAGE:-0}" != 1 ]; then buildah rmi "$TAG" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

start=$(date +%s.%N)
buildah run --isolation=chroot --network=host "$container" -- "${cmd[@]}" >"$WORK/serve.log" 2>&1 &
server_pid=$!
healthy_s=""
ready_s=""
deadline=$(( $(date +%s) + STARTUP_LIMIT_S ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    kill -0 "$server_pid" 2>/dev/null || { tail -n 30 "$WORK/serve.log" >&2; log "the CMD exited"; exit 1; }
    if [ -z "$healthy_s" ] && buildah run --isolation=chroot --network=host "$container" -- "${health[@]}" \
            >/dev/null 2>&1; then
        healthy_s=$(echo "$(date +%s.%N) - $start" | bc)
        log "HEALTHCHECK passed after ${healthy_s}s"
    fi
    if [ -n "$healthy_s" ] && curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; then
        ready_s=$(echo "$(date +%s.%N) - $start" | bc)
        break
    fi
    sleep 1
done
[ -n "$ready_s" ] || { tail -n 30 "$WORK/serve.log" >&2; log "not healthy and ready within ${STARTUP_LIMIT_S}s"; exit 1; }
log "ready after ${ready_s}s"

response=$(curl -sf -F "file=@$IMAGE_FILE" "http://127.0.0.1:$PORT/api/v1/predict")
echo "$response" | python3 -c 'import json, sys; body = json.load(sys.stdin)
assert body["label"] in ("NORMAL", "PNEUMONIA") and 0 <= body["p_pneumonia"] <= 1, body
print("[build_image] prediction:", body["label"], round(body["p_pneumonia"], 4), body["model_id"], file=sys.stderr)'

printf '{"image": "%s", "base_image": "%s", "build_s": %.1f, "image_bytes": %s, "healthy_s": %.1f, "ready_s": %.1f}\n' \
    "$TAG" "$BASE_IMAGE" "$build_s" "$size" "$healthy_s" "$ready_s"
