#!/usr/bin/env bash
# `make images`: builds both images with the tags docker-compose.yml expects by default. What a real user
# gets: python:3.11-slim-bookworm and PyTorch's CPU index. Only where those are unreachable (said so on
# stderr) does it fall back to a stand-in base made from Debian packages (docker/base-image.sh) and to the
# CPU torch wheel of a local find-links directory (TORCH_WHEELS, default /opt/wheels), served to the build
# over loopback. Settings (environment): WEIGHTS (imagenet|random|PATH of a state dict), LABELS (PATH of its labels
# file, for classes of your own), ENGINE (onnx|onnx-int8|openvino-fp32|openvino-bf16|openvino-int8|eager|auto),
# KEEP_OWN_CLASSES (an archive path: refuse while it holds classes of your own; `make images` sets it unless WEIGHTS,
# LABELS or FORCE is given), SERVE_IMAGE,
# GATEWAY_IMAGE, PYTHON_IMAGE (skip the probe), TORCH_WHEELS, TORCH_WHEELS_PORT (8765). WEIGHTS=imagenet without a way to
# download.pytorch.org falls back to random weights with a warning, as `make mar` does.
set -euo pipefail
weights="${WEIGHTS:-imagenet}"
[ ! -f "$weights" ] || weights="$(realpath "$weights")"  # before the cd: a path relative to the caller
labels="${LABELS:-}"
if [ -n "$labels" ]; then
  [ -f "$labels" ] || { echo "images: LABELS must be the path of a labels file, got '$labels'" >&2; exit 2; }
  labels="$(realpath "$labels")"
fi
cd "$(dirname "$0")/.."
# Never images of ImageNet's classes while model_store holds an archive of your own, unless asked (it says how).
[ -z "${KEEP_OWN_CLASSES:-}" ] || python3 -m modelserver.trained_archive "$KEEP_OWN_CLASSES"
engine="${ENGINE:-onnx}"
serve_image="${SERVE_IMAGE:-image-classification-api-serve:local}"
gateway_image="${GATEWAY_IMAGE:-image-classification-api-gateway:local}"
official=python:3.11-slim-bookworm
# The classic builder: BuildKit would pull a frontend image and needs buildx, neither of which is here.
export DOCKER_BUILDKIT=0

base="${PYTHON_IMAGE:-}"
if [ -z "$base" ]; then
  if docker image inspect "$official" >/dev/null 2>&1 || timeout 120 docker pull -q "$official" >/dev/null 2>&1; then
    base="$official"
  else
    echo "images: Docker Hub is unreachable, so the base is a stand-in built from Debian bookworm packages" >&2
    base="image-classification-api-base:bookworm"
    docker/base-image.sh "$base"
  fi
fi

serve_args=()
server_pid=""
staged=""
trap '[ -z "$server_pid" ] || kill "$server_pid"; [ -z "$staged" ] || rm -rf "$staged"' EXIT
if [ -f "$weights" ]; then
  # A state dict, as `make mar WEIGHTS=PATH` takes: staged in the build context under its own name (which the
  # archive's model block shows), the only .pth that .dockerignore lets through; removed again on exit.
  staged=model_store/build-weights
  rm -rf "$staged" && mkdir -p "$staged"
  cp "$weights" "$staged/"
  weights="/src/model_store/$(basename "$weights")"
elif [ "$weights" != imagenet ] && [ "$weights" != random ]; then
  echo "images: WEIGHTS must be imagenet, random or the path of a state dict file, got '$weights'" >&2
  exit 2
fi
if [ -n "$labels" ]; then
  # The weights' labels, staged beside them under a fixed name (the builder reads its content: lines or JSON).
  staged=model_store/build-weights
  mkdir -p "$staged"
  cp "$labels" "$staged/labels.txt"
  labels=/src/model_store/labels.txt
fi
if ! curl -sf --max-time 15 -o /dev/null https://download.pytorch.org/whl/cpu/torch/; then
  if [ "$weights" = imagenet ]; then
    # Like `make mar`: the official weights live on the same unreachable host.
    echo "images: WARNING: download.pytorch.org is unreachable: WEIGHTS=random, the model is UNTRAINED" >&2
    weights=random
  fi
  wheels="${TORCH_WHEELS:-/opt/wheels}"
  wheel="$(find "$wheels" -maxdepth 1 -name 'torch-*+cpu-cp311-*.whl' | sort | tail -n 1)"
  if [ -z "$wheel" ]; then
    echo "images: download.pytorch.org is unreachable and $wheels holds no CPU torch wheel for cp311" >&2
    exit 1
  fi
  if [ "$engine" = eager ]; then
    echo "images: ENGINE=$engine needs torchvision for CPU torch, which only PyTorch's index has" >&2
    exit 1
  fi
  version="$(basename "$wheel" | cut -d- -f2)"
  # A fixed port keeps the build argument, and with it Docker's layer cache, the same from run to run.
  port="${TORCH_WHEELS_PORT:-8765}"
  python3 -m http.server --bind 127.0.0.1 --directory "$wheels" "$port" >/dev/null 2>&1 &
  server_pid=$!
  for _ in $(seq 50); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.1
  done
  echo "images: download.pytorch.org is unreachable: runtime torch is the local CPU wheel torch==$version" \
    "(no torchvision), the archive is built with PyPI's torch (CUDA build, builder stage only)" >&2
  serve_args+=(
    --build-arg "TORCH_PIP_ARGS=--find-links http://127.0.0.1:$port/ --trusted-host 127.0.0.1"
    --build-arg "TORCH_PACKAGES=torch==$version"
    --build-arg "BUILD_TORCH_PIP_ARGS="
  )
fi

build() {  # build TAG DOCKERFILE [ARGS...]
  local tag=$1 dockerfile=$2 started=$SECONDS
  shift 2
  docker build --network host --build-arg "PYTHON_IMAGE=$base" -f "$dockerfile" -t "$tag" "$@" .
  echo "images: built $tag ($(docker image inspect --format '{{.Size}}' "$tag" | numfmt --to=si)B)" \
    "in $((SECONDS - started)) s" >&2
}
serve_args+=(--build-arg "WEIGHTS=$weights" --build-arg "ENGINE=$engine" --build-arg "LABELS=$labels")
build "$serve_image" Dockerfile.serve "${serve_args[@]}"
# The classic builder keeps a stage's layers only while an image uses them: tagging the two build stages
# as well (from the cache, a second each) lets `docker image prune` (.ci/run) drop old layers but keep
# these, so the next build stays warm.
tag_stage() {  # tag_stage IMAGE DOCKERFILE STAGE [ARGS...]
  local image=$1 dockerfile=$2 stage=$3
  shift 3
  docker build -q --network host --build-arg "PYTHON_IMAGE=$base" -f "$dockerfile" "$@" --target "$stage" \
    -t "$image-$stage" . >/dev/null
}
tag_stage "$serve_image" Dockerfile.serve builder "${serve_args[@]}"
tag_stage "$serve_image" Dockerfile.serve runtime-deps "${serve_args[@]}"
build "$gateway_image" Dockerfile.gateway
tag_stage "$gateway_image" Dockerfile.gateway build
