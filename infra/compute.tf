# ---------------------------------------------------------------------------
# Runtime configuration in SSM Parameter Store (SecureString, own KMS key)
# ---------------------------------------------------------------------------

resource "aws_kms_key" "config" {
  description             = "${local.name}: encrypts the SSM parameters the instances read at boot"
  enable_key_rotation     = true
  deletion_window_in_days = 7
}

resource "aws_kms_alias" "config" {
  name          = "alias/${local.name}-config"
  target_key_id = aws_kms_key.config.key_id
}

resource "aws_ssm_parameter" "api_key_hashes" {
  name        = "${local.ssm_prefix}/gateway_api_key_hashes"
  description = "GATEWAY_API_KEY_HASHES: comma-separated SHA-256 hex digests of the gateway API keys"
  type        = "SecureString"
  key_id      = aws_kms_key.config.arn
  value       = join(",", var.gateway_api_key_hashes)
}

# The image references are seeded by Terraform and afterwards owned by the deploy
# workflow (it writes a new tag here and restarts the service through SSM Run Command),
# so later changes of the value are not reverted by terraform apply.
resource "aws_ssm_parameter" "serve_image" {
  name        = "${local.ssm_prefix}/serve_image"
  description = "SERVE_IMAGE: TorchServe image reference"
  type        = "SecureString"
  key_id      = aws_kms_key.config.arn
  value       = var.serve_image

  lifecycle {
    ignore_changes = [value]
  }
}

resource "aws_ssm_parameter" "gateway_image" {
  name        = "${local.ssm_prefix}/gateway_image"
  description = "GATEWAY_IMAGE: gateway image reference"
  type        = "SecureString"
  key_id      = aws_kms_key.config.arn
  value       = var.gateway_image

  lifecycle {
    ignore_changes = [value]
  }
}

# ---------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "containers" {
  name              = "/${var.project_name}/${var.environment}/containers"
  retention_in_days = var.log_retention_days
}

# ---------------------------------------------------------------------------
# Instance role: SSM Session Manager + its own log group + its own parameters
# ---------------------------------------------------------------------------

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "instance" {
  name               = "${local.name}-instance"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_role_policy_attachment" "ssm_core" {
  role       = aws_iam_role.instance.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

data "aws_iam_policy_document" "instance" {
  # Docker's awslogs driver (container logs) and the CloudWatch agent (its Prometheus metrics
  # are EMF log events: CloudWatch extracts the metrics from the log group, so the agent needs
  # no cloudwatch:PutMetricData at all), each into its own log group only.
  statement {
    sid     = "WriteOwnLogs"
    actions = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = flatten([
      for group in [aws_cloudwatch_log_group.containers, aws_cloudwatch_log_group.metrics] : [group.arn, "${group.arn}:*"]
    ])
  }

  statement {
    sid     = "ReadRuntimeConfig"
    actions = ["ssm:GetParameter", "ssm:GetParameters"]
    resources = [
      aws_ssm_parameter.api_key_hashes.arn,
      aws_ssm_parameter.serve_image.arn,
      aws_ssm_parameter.gateway_image.arn,
      aws_ssm_parameter.agent_config.arn,
      aws_ssm_parameter.prometheus_config.arn,
    ]
  }

  # The only Auto Scaling right an instance has: finishing the termination wait of its own group
  # (after it drained). Taking instances out of service is the deploy workflow's role's job.
  statement {
    sid       = "CompleteOwnTerminationWait"
    actions   = ["autoscaling:CompleteLifecycleAction"]
    resources = [aws_autoscaling_group.this.arn]
    condition {
      test     = "StringEquals"
      variable = "autoscaling:ResourceTag/Project"
      values   = [var.project_name]
    }
    condition {
      test     = "StringEquals"
      variable = "autoscaling:ResourceTag/Environment"
      values   = [var.environment]
    }
  }

  statement {
    sid       = "DecryptRuntimeConfig"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.config.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["ssm.${var.aws_region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "instance" {
  name   = "${local.name}-runtime"
  role   = aws_iam_role.instance.id
  policy = data.aws_iam_policy_document.instance.json
}

resource "aws_iam_instance_profile" "instance" {
  name = "${local.name}-instance"
  role = aws_iam_role.instance.name
}

# ---------------------------------------------------------------------------
# Security group: only the gateway port, only from inside the VPC (NLB + health checks)
# ---------------------------------------------------------------------------

resource "aws_security_group" "instance" {
  name        = "${local.name}-instance"
  description = "Gateway port from inside the VPC only; no SSH (use SSM Session Manager)"
  vpc_id      = aws_vpc.this.id

  ingress {
    description = "Gateway from the internal NLB (VPC link traffic and health checks)"
    protocol    = "tcp"
    from_port   = var.gateway_port
    to_port     = var.gateway_port
    cidr_blocks = [aws_vpc.this.cidr_block]
  }

  egress {
    description = "Image pulls, SSM, CloudWatch Logs (through the NAT gateway)"
    protocol    = "-1"
    from_port   = 0
    to_port     = 0
    cidr_blocks = ["0.0.0.0/0"]
  }

  tags = { Name = "${local.name}-instance" }
}

# ---------------------------------------------------------------------------
# Launch template + Auto Scaling group
# ---------------------------------------------------------------------------

data "aws_ssm_parameter" "ami" {
  count = var.ami_id == null ? 1 : 0
  name  = var.ami_ssm_parameter
}

locals {
  ami_id = var.ami_id != null ? var.ami_id : nonsensitive(data.aws_ssm_parameter.ami[0].value)

  user_data = templatefile("${path.module}/templates/user_data.sh.tftpl", {
    app_dir             = local.app_dir
    service_name        = local.service_name
    region              = var.aws_region
    compose_gz_b64      = base64gzip(file(local.compose_file))
    rollout_gz_b64      = base64gzip(file(local.rollout_script))
    compose_version     = var.compose_version
    gateway_port        = var.gateway_port
    gateway_drain_s     = local.gateway_drain_s
    gateway_stop_s      = local.gateway_stop_s
    lb_drain_s          = local.lb_drain_s
    lb_rise_s           = local.lb_rise_s
    stop_budget_s       = local.stop_budget_s
    asg_name            = local.name
    lifecycle_hook      = local.lifecycle_hook
    log_group           = aws_cloudwatch_log_group.containers.name
    param_api_key_hash  = aws_ssm_parameter.api_key_hashes.name
    param_serve_image   = aws_ssm_parameter.serve_image.name
    param_gateway_image = aws_ssm_parameter.gateway_image.name
    param_agent_config  = aws_ssm_parameter.agent_config.name
    param_prometheus    = aws_ssm_parameter.prometheus_config.name
    prometheus_config   = local.prometheus_config_path
    ts_metrics_port     = var.torchserve_metrics_port
    engine_precision    = var.engine_precision
  })
}

resource "aws_launch_template" "this" {
  name                   = local.name
  description            = "${local.name}: Amazon Linux 2023 running docker compose"
  image_id               = local.ami_id
  instance_type          = var.instance_type
  update_default_version = true
  # gzip: EC2 takes 16 KiB of user_data; cloud-init unpacks it before running the script.
  user_data = base64gzip(local.user_data)

  vpc_security_group_ids = [aws_security_group.instance.id]

  iam_instance_profile {
    arn = aws_iam_instance_profile.instance.arn
  }

  # IMDSv2 only. A hop limit of 1 keeps containers (one extra network hop away)
  # from reading the instance role credentials; dockerd itself runs on the host.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_type           = "gp3"
      volume_size           = var.root_volume_size_gb
      encrypted             = true
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = false
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.common_tags, { Name = local.name })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.common_tags, { Name = local.name })
  }
}

resource "aws_autoscaling_group" "this" {
  name                      = local.name
  min_size                  = var.asg_min_size
  max_size                  = var.asg_max_size
  desired_capacity          = coalesce(var.asg_desired_capacity, var.asg_min_size)
  vpc_zone_identifier       = aws_subnet.private[*].id
  target_group_arns         = [aws_lb_target_group.gateway.arn]
  health_check_type         = "ELB"
  health_check_grace_period = var.health_check_grace_period
  wait_for_capacity_timeout = var.wait_for_capacity_timeout

  launch_template {
    id      = aws_launch_template.this.id
    version = aws_launch_template.this.latest_version
  }

  # A new launch template version (AMI, instance type, user_data) rolls the group, launching each
  # replacement before it terminates the old instance (capacity never drops below 100 %).
  # Group metrics (free, 1-minute): the capacity alarms and the dashboard read them.
  metrics_granularity = "1Minute"
  enabled_metrics = [
    "GroupDesiredCapacity",
    "GroupInServiceInstances",
    "GroupMaxSize",
    "GroupMinSize",
    "GroupStandbyInstances",
  ]

  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 100
      max_healthy_percentage = 200
    }
  }

  dynamic "tag" {
    for_each = merge(local.common_tags, { Name = local.name })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    # Target tracking changes desired_capacity at run time.
    ignore_changes = [desired_capacity]
  }
}

# Scale-in and instance refresh: the terminating instance waits in Terminating:Wait (and is
# deregistered from the target group); its lifecycle watcher (user_data) sees that state in the
# instance metadata, stops the unit (gateway drain, in-flight requests, TorchServe) and completes
# the action. The timeout is the bound when the watcher cannot; termination then continues.
resource "aws_autoscaling_lifecycle_hook" "drain" {
  name                   = local.lifecycle_hook
  autoscaling_group_name = aws_autoscaling_group.this.name
  lifecycle_transition   = "autoscaling:EC2_INSTANCE_TERMINATING"
  heartbeat_timeout      = local.lifecycle_hook_s
  default_result         = "CONTINUE"
}

resource "aws_autoscaling_policy" "cpu" {
  name                   = "${local.name}-cpu-target"
  autoscaling_group_name = aws_autoscaling_group.this.name
  policy_type            = "TargetTrackingScaling"

  target_tracking_configuration {
    predefined_metric_specification {
      predefined_metric_type = "ASGAverageCPUUtilization"
    }
    target_value = var.cpu_target_utilization
  }
}

# ---------------------------------------------------------------------------
# Internal Network Load Balancer (the VPC link target)
# ---------------------------------------------------------------------------

resource "aws_lb" "internal" {
  name                             = trimsuffix(substr("${local.name}-nlb", 0, 32), "-")
  internal                         = true
  load_balancer_type               = "network"
  subnets                          = aws_subnet.private[*].id
  enable_cross_zone_load_balancing = true
}

resource "aws_lb_target_group" "gateway" {
  name        = trimsuffix(substr("${local.name}-gw", 0, 32), "-")
  port        = var.gateway_port
  protocol    = "TCP"
  target_type = "instance"
  vpc_id      = aws_vpc.this.id
  # Connections already open keep flowing this long after a deregistration (standby, scale-in).
  deregistration_delay = local.deregistration_s

  health_check {
    protocol            = "HTTP"
    path                = "/readyz"
    port                = "traffic-port"
    matcher             = "200"
    interval            = var.lb_health_check_interval_s
    healthy_threshold   = var.lb_healthy_threshold
    unhealthy_threshold = var.lb_unhealthy_threshold
  }

  # A draining gateway fails its check while it still answers the requests on its open
  # connections: the NLB must not reset those when the target turns unhealthy.
  target_health_state {
    enable_unhealthy_connection_termination = false
  }
}

resource "aws_lb_listener" "gateway" {
  load_balancer_arn = aws_lb.internal.arn
  port              = 80
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.gateway.arn
  }
}
