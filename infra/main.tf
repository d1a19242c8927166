data "aws_partition" "current" {}

data "aws_region" "current" {}

data "aws_availability_zones" "available" {
  count = var.availability_zones == null ? 1 : 0
  state = "available"
}

locals {
  name = "${var.project_name}-${var.environment}"

  common_tags = merge(var.extra_tags, {
    Project     = var.project_name
    Environment = var.environment
    ManagedBy   = "terraform"
  })

  azs = var.availability_zones != null ? var.availability_zones : slice(data.aws_availability_zones.available[0].names, 0, 2)

  # SSM Parameter Store path holding the runtime configuration the instances fetch at boot.
  ssm_prefix = "/${var.project_name}/${var.environment}"

  compose_file = startswith(var.compose_file_path, "/") ? var.compose_file_path : "${path.module}/${var.compose_file_path}"

  rollout_script = startswith(var.rollout_script_path, "/") ? var.rollout_script_path : "${path.module}/${var.rollout_script_path}"

  app_dir      = "/opt/${var.project_name}"
  service_name = var.project_name

  # --- Drain budget (seconds), all derived from the NLB health check --------------------------
  # The NLB stops sending new connections to a target after `unhealthy_threshold` failed checks
  # `interval` apart: that long after /readyz turns 503 it may still send. The gateway keeps
  # serving that long (GATEWAY_DRAIN_S) and the rollout waits as long before recreating
  # (LB_DRAIN_S), each with a margin.
  lb_detect_s     = var.lb_health_check_interval_s * var.lb_unhealthy_threshold
  gateway_drain_s = local.lb_detect_s + var.drain_margin_s
  lb_drain_s      = local.lb_detect_s + var.drain_margin_s
  # Back in: `healthy_threshold` passed checks before the NLB sends again (LB_RISE_S, generic path).
  lb_rise_s = var.lb_healthy_threshold * var.lb_health_check_interval_s + var.drain_margin_s
  # The longest a request already in flight can still matter: API Gateway gives up after this.
  in_flight_s = ceil(var.api_integration_timeout_ms / 1000)
  # Target deregistration (standby, scale-in, refresh): connections already open keep flowing this long.
  deregistration_s = local.in_flight_s + var.drain_margin_s
  # The gateway container's stop (compose's stop_grace_period, GATEWAY_STOP_GRACE_PERIOD): its
  # drain, then its in-flight requests. TorchServe stops after it (its stop_grace_period, 30 s).
  gateway_stop_s = local.gateway_drain_s + local.in_flight_s + var.drain_margin_s
  serve_stop_s   = 30
  # `systemctl stop` (compose down): the gateway's stop, then TorchServe's.
  stop_budget_s = local.gateway_stop_s + local.serve_stop_s
  # Terminating:Wait: the instance notices (a poll), stops the unit, completes the action.
  lifecycle_hook_s = local.stop_budget_s + 60
  lifecycle_hook   = "${local.name}-drain"
}
