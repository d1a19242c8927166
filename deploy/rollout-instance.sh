#!/usr/bin/env bash
# The one per-instance rollout (docs/operations.md, "Rollout runbook"): pull, out of rotation, recreate, warm up and
# wait until ready, back into rotation; when the new images never get ready, back to the previous ones
# and exit 1. Used by the EC2 unit's reload, by deploy.yml through SSM (one instance at a time) and by
# tests/system/fleet/test_fleet.py. Everything comes from the environment:
#   SERVE_IMAGE, GATEWAY_IMAGE   the images to roll out (required)
#   COMPOSE_PROJECT_NAME, GATEWAY_PORT, GATEWAY_API_KEY_HASHES, ...   docker-compose.yml's usual variables
#   COMPOSE_FILE        default: the docker-compose.yml next to this folder
#   ROLLOUT_ROTATION    generic (default): drain the gateway (SIGUSR1: /readyz turns 503 `draining`) and
#                       wait LB_DRAIN_S; back in = ready, then the balancer's first request or LB_RISE_S.
#                       aws: `$ROTATION_CMD out` / `$ROTATION_CMD in` (deploy/rotation.py: standby or
#                       deregistration, waiting until done / until the target is healthy).
#                       none: the caller (deploy.yml) takes the instance out and puts it back.
#                       aws and none drain the gateway too once out (connections still open move), and
#                       its stop then waits for the rest of GATEWAY_DRAIN_S.
#   ROTATION_CMD        default: python3 /opt/image-classification-api/deploy/rotation.py
#   LB_DRAIN_S          time the balancer needs to stop sending once /readyz says 503; default 60: the
#                       NLB's 3 failed checks x 15 s plus a margin
#   LB_RISE_S           longest wait for the balancer's first request after ready; default 45: the NLB's
#                       2 healthy checks x 15 s plus a margin
#   READY_TIMEOUT_S     new images not ready (warm-up answered, /readyz 200) within this: roll back;
#                       default 300 (TorchServe's health check allows 180 s to start)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
compose_file="${COMPOSE_FILE:-$here/../docker-compose.yml}"
rotation="${ROLLOUT_ROTATION:-generic}"
read -r -a rotation_cmd <<<"${ROTATION_CMD:-python3 /opt/image-classification-api/deploy/rotation.py}"
lb_drain_s="${LB_DRAIN_S:-60}"
lb_rise_s="${LB_RISE_S:-45}"
ready_timeout_s="${READY_TIMEOUT_S:-300}"
url="http://127.0.0.1:${GATEWAY_PORT:-8000}"
export SERVE_IMAGE="${SERVE_IMAGE:?set SERVE_IMAGE to the serve image to roll out}"
export GATEWAY_IMAGE="${GATEWAY_IMAGE:?set GATEWAY_IMAGE to the gateway image to roll out}"
case "$rotation" in generic | aws | none) ;; *)
  echo "rollout-instance: ROLLOUT_ROTATION must be generic, aws or none, got '$rotation'" >&2
  exit 2
  ;;
esac

log() { printf '%s rollout-instance[%s]: %s\n' "$(date -u +%FT%TZ)" "${COMPOSE_PROJECT_NAME:-default}" "$*" >&2; }
compose() { docker compose -f "$compose_file" "$@"; }
status_of() { curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$1" || true; }

# Requests the gateway answered on its API routes (its own /metrics; health checks and scrapes not counted).
served() {
  { curl -sf --max-time 3 "$url/metrics" 2>/dev/null || true; } |
    awk '/^gateway_requests_total\{/ && !/route="\/(readyz|healthz|metrics|v2\/health\/[a-z]+)"/ {n += $NF}
         END {printf "%d\n", n}'
}

# The image a running service's container was created from, as a reference that still names exactly that
# image: its tag if the tag was not moved since, else a local rollback tag on its id.
running_image() {
  local container id ref
  container="$(compose ps --quiet "$1")"
  [ -n "$container" ] || return 0
  id="$(docker inspect --format '{{.Image}}' "$container")"
  ref="$(docker inspect --format '{{.Config.Image}}' "$container")"
  if [ "$(docker image inspect --format '{{.Id}}' "$ref" 2>/dev/null)" != "$id" ]; then
    ref="image-classification-api-rollback/${COMPOSE_PROJECT_NAME:-default}-$1:previous"
    docker tag "$id" "$ref"
  fi
  echo "$ref"
}

# SIGUSR1: /readyz answers 503 `draining`, every answer closes its connection (keep-alive clients move to
# another instance), and the SIGTERM of the stop below waits for the rest of GATEWAY_DRAIN_S. Returns 1
# when no gateway runs.
drain_gateway() {
  local gateway
  gateway="$(compose ps --quiet gateway)"
  [ -n "$gateway" ] || return 1
  docker kill --signal USR1 "$gateway" >/dev/null
  sleep 1
  [ "$(status_of "$url/readyz")" = 503 ] || log "WARNING: /readyz does not say 503 after SIGUSR1 (a gateway without drain?)"
}

# generic: the balancer sees the 503 and stops sending. aws and none: the balancer's API takes the
# instance out first (its failing checks must not count against an instance still in service), then the
# drain moves the connections that stay open.
out_of_rotation() {
  case "$rotation" in
    generic)
      if drain_gateway; then
        log "draining: waiting LB_DRAIN_S=${lb_drain_s} s for the balancer to stop sending"
        sleep "$lb_drain_s"
      fi
      ;;
    aws)
      "${rotation_cmd[@]}" out
      drain_gateway || true
      ;;
    none) drain_gateway || true ;;
  esac
}
# Whatever ends the script once the instance is out, it goes back in (on AWS: out of standby, so the group
# sees an unhealthy instance and replaces it, rather than one kept out forever).
taken_out=0
trap '[ "$taken_out" = 0 ] || back_into_rotation' EXIT

back_into_rotation() {
  taken_out=0
  case "$rotation" in
    generic)
      local deadline=$((SECONDS + ${lb_rise_s%.*})) before
      before="$(served)"
      while [ "$SECONDS" -lt "$deadline" ]; do
        if [ "$(served)" -gt "$before" ]; then
          log "back in rotation: the balancer sends requests again"
          return 0
        fi
        sleep 0.5
      done
      log "back in rotation: LB_RISE_S=${lb_rise_s} s passed (no request seen)"
      ;;
    aws) "${rotation_cmd[@]}" in ;;
    none) ;;
  esac
}

# The drained gateway stops first (it finishes what is in flight), then `up` recreates what changed with
# the exported SERVE_IMAGE / GATEWAY_IMAGE (compose's recreate alone would stop TorchServe first, under the
# gateway's in-flight requests) and waits for TorchServe's health check (the gateway depends on it); then a
# warm-up inference and /readyz 200, all within READY_TIMEOUT_S.
up_and_ready() {
  local deadline=$((SECONDS + ready_timeout_s))
  compose stop gateway
  if ! timeout "$ready_timeout_s" docker compose -f "$compose_file" up --detach --no-build --pull never; then
    log "docker compose up failed or timed out"
    return 1
  fi
  # An image from before gateway/warmup.py (a rollback to it) has no warm-up; /readyz still has to pass.
  if ! compose exec -T gateway python -c 'import importlib.util as u, sys; sys.exit(not u.find_spec("gateway.warmup"))'; then
    log "this gateway image has no gateway.warmup: no warm-up inference"
  else
    until compose exec -T gateway python -m gateway.warmup; do
      [ "$SECONDS" -lt "$deadline" ] || return 1
      sleep 2
    done
  fi
  until [ "$(status_of "$url/readyz")" = 200 ]; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 1
  done
}

started=$SECONDS
# 1. Pull while the instance still serves. An image already here and in no registry is used as it is.
for image in "$SERVE_IMAGE" "$GATEWAY_IMAGE"; do
  if ! docker pull --quiet "$image" >/dev/null 2>&1; then
    docker image inspect "$image" >/dev/null 2>&1 || {
      log "cannot pull $image and it is not on this host"
      exit 1
    }
    log "$image: not pulled (no registry has it), using the local image"
  fi
done

# 2. What runs now, to roll back to.
previous_serve="$(running_image torchserve)"
previous_gateway="$(running_image gateway)"
log "from ${previous_serve:-nothing} + ${previous_gateway:-nothing} to $SERVE_IMAGE + $GATEWAY_IMAGE"

# 3. Out of rotation; 4. recreate (compose stops the gateway first, then TorchServe); 5. ready.
taken_out=1
out_of_rotation
out_at=$SECONDS
if up_and_ready; then
  back_into_rotation
  log "done in $((SECONDS - started)) s ($((SECONDS - out_at)) s from drained to back in rotation)"
  exit 0
fi

# 6. The new images never got ready: back to the previous ones, back into rotation, exit non-zero.
log "the new images are not ready within READY_TIMEOUT_S=${ready_timeout_s} s: rolling back"
compose logs --no-color --tail 40 >&2 || true
if [ -z "$previous_serve" ] || [ -z "$previous_gateway" ]; then
  log "nothing ran before: no previous images to roll back to"
  exit 1
fi
export SERVE_IMAGE="$previous_serve" GATEWAY_IMAGE="$previous_gateway"
if up_and_ready; then
  back_into_rotation
  log "rolled back to $SERVE_IMAGE + $GATEWAY_IMAGE"
  exit 1
fi
log "the previous images are not ready either: the instance stays out of rotation"
exit 3
