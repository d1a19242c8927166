# ---------------------------------------------------------------------------
# General
# ---------------------------------------------------------------------------

variable "project_name" {
  description = "Name prefix for every resource, and the value of the Project tag that deploy tooling (SSM Run Command) targets."
  type        = string
  default     = "image-classification-api"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,38}[a-z0-9]$", var.project_name))
    error_message = "project_name must be 4-40 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "environment" {
  description = "Deployment environment name (used in names, tags and the SSM parameter path)."
  type        = string
  default     = "prod"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,15}$", var.environment))
    error_message = "environment must be 2-16 lowercase alphanumeric characters, starting with a letter."
  }
}

variable "aws_region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.aws_region))
    error_message = "aws_region must look like an AWS region name, e.g. us-east-1."
  }
}

variable "aws_endpoint_url" {
  description = "Override URL for every AWS API this configuration uses (a local emulator such as moto, for tests). Leave null for real AWS."
  type        = string
  default     = null

  validation {
    condition     = var.aws_endpoint_url == null || can(regex("^https?://[^/]+/?$", var.aws_endpoint_url))
    error_message = "aws_endpoint_url must be null or an http(s)://host[:port] URL."
  }
}

variable "extra_tags" {
  description = "Additional tags applied to every resource."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------

variable "vpc_cidr" {
  description = "CIDR block of the VPC. Public and private /20-or-smaller subnets are carved out of it for two AZs."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 24
    error_message = "vpc_cidr must be a valid IPv4 CIDR with a prefix length between /16 and /24."
  }
}

variable "availability_zones" {
  description = "Exactly two availability zones to use. Null picks the first two available zones of the region."
  type        = list(string)
  default     = null

  validation {
    condition     = var.availability_zones == null || try(length(var.availability_zones) == 2, false)
    error_message = "availability_zones must be null or a list of exactly two zone names."
  }
}

variable "nat_gateway_per_az" {
  description = "Create one NAT gateway per AZ (resilient to an AZ outage, ~2x NAT cost) instead of a single shared NAT gateway."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------
# Compute
# ---------------------------------------------------------------------------

variable "ami_ssm_parameter" {
  description = "Public SSM parameter holding the AMI id (Amazon Linux 2023). Ignored when ami_id is set."
  type        = string
  default     = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"

  validation {
    condition     = startswith(var.ami_ssm_parameter, "/aws/service/")
    error_message = "ami_ssm_parameter must be a public AWS SSM parameter path starting with /aws/service/."
  }
}

variable "ami_id" {
  description = "Pin an explicit AMI id instead of resolving ami_ssm_parameter (reproducible rollouts). Null resolves the SSM parameter."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must be null or look like ami-0123456789abcdef0."
  }
}

variable "instance_type" {
  description = "EC2 instance type. The default, c7i.xlarge (Sapphire Rapids: 4 vCPUs on 2 cores, AVX-512 VNNI, AMX), is a compute-optimised x86 type suited to CPU inference; the AMI must match its architecture. The serve image's archive fixes its workers (docs/model.md, \"Serving defaults\"); each worker takes vCPUs / workers intra-op threads."
  type        = string
  default     = "c7i.xlarge"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must look like an EC2 instance type, e.g. c7i.xlarge."
  }
}

variable "engine_precision" {
  description = "The precision policy each TorchServe worker starts with (ENGINE_PRECISION): exact (fp32 only), near-fp32 (also bf16 where the CPU has it) or int8 (also the quantised model). It bounds what an auto archive may serve; the default image serves onnx, fp32, so exact (docs/model.md, \"Which engine by default\")."
  type        = string
  default     = "exact"

  validation {
    condition     = contains(["exact", "near-fp32", "int8"], var.engine_precision)
    error_message = "engine_precision must be exact, near-fp32 or int8."
  }
}

variable "root_volume_size_gb" {
  description = "Size of the encrypted gp3 root volume in GiB (holds the Docker images, which are large for PyTorch)."
  type        = number
  default     = 30

  validation {
    condition     = var.root_volume_size_gb >= 20 && var.root_volume_size_gb <= 500 && floor(var.root_volume_size_gb) == var.root_volume_size_gb
    error_message = "root_volume_size_gb must be a whole number between 20 and 500."
  }
}

variable "asg_min_size" {
  description = "Minimum number of instances in the Auto Scaling group."
  type        = number
  default     = 2

  validation {
    condition     = var.asg_min_size >= 0 && var.asg_min_size <= 50 && floor(var.asg_min_size) == var.asg_min_size
    error_message = "asg_min_size must be a whole number between 0 and 50."
  }
}

variable "asg_max_size" {
  description = "Maximum number of instances in the Auto Scaling group."
  type        = number
  default     = 4

  validation {
    condition     = var.asg_max_size >= 1 && var.asg_max_size <= 50 && var.asg_max_size >= var.asg_min_size
    error_message = "asg_max_size must be between 1 and 50 and not smaller than asg_min_size."
  }
}

variable "asg_desired_capacity" {
  description = "Initial desired number of instances (target tracking adjusts it afterwards). Null means asg_min_size."
  type        = number
  default     = null

  validation {
    condition     = var.asg_desired_capacity == null || try(var.asg_desired_capacity >= var.asg_min_size && var.asg_desired_capacity <= var.asg_max_size, false)
    error_message = "asg_desired_capacity must be null or between asg_min_size and asg_max_size."
  }
}

variable "cpu_target_utilization" {
  description = "Average CPU utilisation (percent) that the target-tracking scaling policy keeps the group at."
  type        = number
  default     = 60

  validation {
    condition     = var.cpu_target_utilization >= 10 && var.cpu_target_utilization <= 90
    error_message = "cpu_target_utilization must be between 10 and 90."
  }
}

variable "health_check_grace_period" {
  description = "Seconds after launch before failed load-balancer health checks replace an instance (image pull + model load)."
  type        = number
  default     = 600

  validation {
    condition     = var.health_check_grace_period >= 60 && var.health_check_grace_period <= 3600
    error_message = "health_check_grace_period must be between 60 and 3600 seconds."
  }
}

variable "wait_for_capacity_timeout" {
  description = "How long terraform apply waits for the ASG to reach its minimum size (\"0\" disables waiting)."
  type        = string
  default     = "15m"

  validation {
    condition     = can(regex("^(0|[0-9]+[smh])$", var.wait_for_capacity_timeout))
    error_message = "wait_for_capacity_timeout must be \"0\" or a duration such as 10m."
  }
}

# ---------------------------------------------------------------------------
# Load balancer health check and drain (the drain times are derived from these)
# ---------------------------------------------------------------------------

variable "lb_health_check_interval_s" {
  description = "Seconds between the NLB's HTTP /readyz health checks of each target."
  type        = number
  default     = 15

  validation {
    condition     = var.lb_health_check_interval_s >= 10 && var.lb_health_check_interval_s <= 300 && floor(var.lb_health_check_interval_s) == var.lb_health_check_interval_s
    error_message = "lb_health_check_interval_s must be a whole number between 10 and 300 (above the check's own 6 s timeout)."
  }
}

variable "lb_unhealthy_threshold" {
  description = "Consecutive failed health checks before the NLB stops sending new connections to a target."
  type        = number
  default     = 3

  validation {
    condition     = var.lb_unhealthy_threshold >= 2 && var.lb_unhealthy_threshold <= 10 && floor(var.lb_unhealthy_threshold) == var.lb_unhealthy_threshold
    error_message = "lb_unhealthy_threshold must be a whole number between 2 and 10."
  }
}

variable "lb_healthy_threshold" {
  description = "Consecutive successful health checks before the NLB sends to a target again."
  type        = number
  default     = 2

  validation {
    condition     = var.lb_healthy_threshold >= 2 && var.lb_healthy_threshold <= 10 && floor(var.lb_healthy_threshold) == var.lb_healthy_threshold
    error_message = "lb_healthy_threshold must be a whole number between 2 and 10."
  }
}

variable "drain_margin_s" {
  description = "Seconds added to each derived drain time (health-check jitter, the NLB's own propagation)."
  type        = number
  default     = 10

  validation {
    condition     = var.drain_margin_s >= 0 && var.drain_margin_s <= 120 && floor(var.drain_margin_s) == var.drain_margin_s
    error_message = "drain_margin_s must be a whole number between 0 and 120."
  }
}

# ---------------------------------------------------------------------------
# Application (docker compose)
# ---------------------------------------------------------------------------

variable "compose_file_path" {
  description = "Path of the docker-compose.yml the instances run; relative paths are resolved from this module directory."
  type        = string
  default     = "../docker-compose.yml"

  validation {
    condition     = length(trimspace(var.compose_file_path)) > 0
    error_message = "compose_file_path must not be empty."
  }
}

variable "rollout_script_path" {
  description = "Path of deploy/rollout-instance.sh, installed on the instances by user_data (gzip) and run by the unit's reload; relative paths are resolved from this module directory. Deploys replace it with the deployed commit's copy."
  type        = string
  default     = "../deploy/rollout-instance.sh"

  validation {
    condition     = length(trimspace(var.rollout_script_path)) > 0
    error_message = "rollout_script_path must not be empty."
  }
}

variable "compose_version" {
  description = "Release of the Docker Compose v2 CLI plugin installed on the instances (checksum-verified download from GitHub)."
  type        = string
  default     = "v2.39.2"

  validation {
    condition     = can(regex("^v2\\.[0-9]+\\.[0-9]+$", var.compose_version))
    error_message = "compose_version must look like v2.X.Y."
  }
}

variable "gateway_port" {
  description = "Port the gateway container publishes on the instance (GATEWAY_PORT); the load balancer targets it."
  type        = number
  default     = 8000

  validation {
    condition     = var.gateway_port >= 1024 && var.gateway_port <= 65535 && floor(var.gateway_port) == var.gateway_port
    error_message = "gateway_port must be an unprivileged port between 1024 and 65535."
  }
}

variable "gateway_api_key_hashes" {
  description = "SHA-256 hex digests of the gateway's API keys (GATEWAY_API_KEY_HASHES). Stored as an SSM SecureString, never in user_data."
  type        = list(string)
  sensitive   = true

  validation {
    condition     = length(var.gateway_api_key_hashes) > 0 && alltrue([for h in var.gateway_api_key_hashes : can(regex("^[0-9a-f]{64}$", h))])
    error_message = "gateway_api_key_hashes must be a non-empty list of lowercase 64-character SHA-256 hex digests."
  }
}

variable "serve_image" {
  description = "TorchServe image reference (SERVE_IMAGE), e.g. myorg/image-classification-serve:1.2.3. Stored in SSM so rollouts do not replace instances."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$", var.serve_image))
    error_message = "serve_image must be a Docker image reference such as org/name:tag."
  }
}

variable "gateway_image" {
  description = "Gateway image reference (GATEWAY_IMAGE), e.g. myorg/image-classification-gateway:1.2.3."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$", var.gateway_image))
    error_message = "gateway_image must be a Docker image reference such as org/name:tag."
  }
}

variable "log_retention_days" {
  description = "Retention of the container and API Gateway access log groups."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the values CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, ...)."
  }
}

# ---------------------------------------------------------------------------
# API Gateway
# ---------------------------------------------------------------------------

variable "stage_name" {
  description = "Name of the API Gateway stage (the first path segment of the invoke URL, before the gateway's own /v1/... routes)."
  type        = string
  default     = "api"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,64}$", var.stage_name))
    error_message = "stage_name must be 1-64 letters, digits, hyphens or underscores."
  }
}

variable "api_throttle_rate_limit" {
  description = "Steady-state requests per second allowed per API key (usage plan) and for the stage as a whole."
  type        = number
  default     = 20

  validation {
    condition     = var.api_throttle_rate_limit > 0 && var.api_throttle_rate_limit <= 10000
    error_message = "api_throttle_rate_limit must be greater than 0 and at most 10000."
  }
}

variable "api_throttle_burst_limit" {
  description = "Burst (token bucket size) allowed per API key and for the stage."
  type        = number
  default     = 40

  validation {
    condition     = var.api_throttle_burst_limit >= 1 && var.api_throttle_burst_limit <= 5000 && floor(var.api_throttle_burst_limit) == var.api_throttle_burst_limit
    error_message = "api_throttle_burst_limit must be a whole number between 1 and 5000."
  }
}

variable "api_quota_limit" {
  description = "Maximum number of requests per API key per api_quota_period."
  type        = number
  default     = 100000

  validation {
    condition     = var.api_quota_limit >= 1 && floor(var.api_quota_limit) == var.api_quota_limit
    error_message = "api_quota_limit must be a positive whole number."
  }
}

variable "api_quota_period" {
  description = "Period of the usage plan quota: DAY, WEEK or MONTH."
  type        = string
  default     = "MONTH"

  validation {
    condition     = contains(["DAY", "WEEK", "MONTH"], var.api_quota_period)
    error_message = "api_quota_period must be DAY, WEEK or MONTH."
  }
}

variable "stage_throttle_rate_limit" {
  description = "Steady-state requests per second for the whole stage (all API keys together); protects the backend."
  type        = number
  default     = 100

  validation {
    condition     = var.stage_throttle_rate_limit > 0 && var.stage_throttle_rate_limit <= 10000
    error_message = "stage_throttle_rate_limit must be greater than 0 and at most 10000."
  }
}

variable "stage_throttle_burst_limit" {
  description = "Burst allowed for the whole stage (all API keys together)."
  type        = number
  default     = 200

  validation {
    condition     = var.stage_throttle_burst_limit >= 1 && var.stage_throttle_burst_limit <= 5000 && floor(var.stage_throttle_burst_limit) == var.stage_throttle_burst_limit
    error_message = "stage_throttle_burst_limit must be a whole number between 1 and 5000."
  }
}

variable "api_integration_timeout_ms" {
  description = "API Gateway integration timeout in milliseconds (REST API hard limit 29000 by default)."
  type        = number
  default     = 29000

  validation {
    condition     = var.api_integration_timeout_ms >= 50 && var.api_integration_timeout_ms <= 29000
    error_message = "api_integration_timeout_ms must be between 50 and 29000."
  }
}

variable "expose_health_endpoints" {
  description = "Forward /healthz and /readyz through API Gateway (still API-key protected). False answers them with 404 at the edge."
  type        = bool
  default     = false
}

variable "manage_api_gateway_account" {
  description = "Set the region-wide API Gateway CloudWatch Logs role (required once per account/region for access logs). Disable if another stack owns it."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------
# Observability: CloudWatch agent, alarms, dashboard (observability.tf)
# ---------------------------------------------------------------------------

variable "alarm_email" {
  description = "E-mail address subscribed to the alarms' SNS topic (the operator confirms the subscription from the mail). Null creates the topic without a subscription: subscribe a pager or chat integration to the topic yourself."
  type        = string
  default     = null

  validation {
    condition     = var.alarm_email == null || can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", var.alarm_email))
    error_message = "alarm_email must be null or an e-mail address such as ops@example.com."
  }
}

variable "torchserve_metrics_port" {
  description = "Port TorchServe's Prometheus metrics are published on, on the instance's 127.0.0.1 only (TORCHSERVE_METRICS_PORT in the compose file); the CloudWatch agent scrapes it."
  type        = number
  default     = 8082

  validation {
    condition     = var.torchserve_metrics_port >= 1024 && var.torchserve_metrics_port <= 65535 && floor(var.torchserve_metrics_port) == var.torchserve_metrics_port
    error_message = "torchserve_metrics_port must be an unprivileged port between 1024 and 65535."
  }
}

variable "metrics_scrape_interval_s" {
  description = "Seconds between the CloudWatch agent's scrapes of the gateway's and TorchServe's /metrics (one data point per scrape: the alarms' periods are 60 s)."
  type        = number
  default     = 60

  validation {
    condition     = contains([10, 15, 20, 30, 60], var.metrics_scrape_interval_s)
    error_message = "metrics_scrape_interval_s must be 10, 15, 20, 30 or 60 (a divisor of the alarms' 60 s period)."
  }
}

variable "alarm_error_rate_percent" {
  description = "Percentage of requests failed with a 5xx (API Gateway 5XXError) or with a 503 / 504 from the gateway, over 3 of 5 minutes, that raises an alarm."
  type        = number
  default     = 5

  validation {
    condition     = var.alarm_error_rate_percent > 0 && var.alarm_error_rate_percent <= 100
    error_message = "alarm_error_rate_percent must be greater than 0 and at most 100."
  }
}

variable "alarm_latency_p99_ms" {
  description = "API Gateway p99 Latency (ms) over 3 of 5 minutes that raises an alarm; below the integration timeout, where API Gateway answers 504 itself."
  type        = number
  default     = 20000

  validation {
    condition     = var.alarm_latency_p99_ms >= 100 && var.alarm_latency_p99_ms < var.api_integration_timeout_ms
    error_message = "alarm_latency_p99_ms must be at least 100 and below api_integration_timeout_ms."
  }
}

variable "no_traffic_alarm_minutes" {
  description = "Raise an alarm when API Gateway counts no request at all for this many minutes (a multiple of 5, up to 1440). 0 turns the alarm off (the default: set it where traffic is always expected)."
  type        = number
  default     = 0

  validation {
    condition     = var.no_traffic_alarm_minutes == 0 || (var.no_traffic_alarm_minutes >= 5 && var.no_traffic_alarm_minutes <= 1440 && var.no_traffic_alarm_minutes % 5 == 0)
    error_message = "no_traffic_alarm_minutes must be 0 (off) or a multiple of 5 between 5 and 1440."
  }
}
