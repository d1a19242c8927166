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

  app_dir      = "/opt/${var.project_name}"
  service_name = var.project_name
}
