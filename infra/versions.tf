terraform {
  required_version = ">= 1.11.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100.0"
    }
  }
}

locals {
  # True when the provider talks to a local emulator (moto, LocalStack) instead of AWS.
  emulated = var.aws_endpoint_url != null
}

provider "aws" {
  region = var.aws_region

  # Only relaxed when an emulator endpoint is configured; against real AWS these stay at
  # the provider defaults (credentials are validated, the account id is looked up).
  skip_credentials_validation = local.emulated
  skip_metadata_api_check     = local.emulated
  skip_region_validation      = local.emulated
  s3_use_path_style           = local.emulated

  # Every service this configuration calls. A null value means "the real AWS endpoint".
  endpoints {
    apigateway     = var.aws_endpoint_url
    autoscaling    = var.aws_endpoint_url
    cloudwatch     = var.aws_endpoint_url
    cloudwatchlogs = var.aws_endpoint_url
    ec2            = var.aws_endpoint_url
    elbv2          = var.aws_endpoint_url
    iam            = var.aws_endpoint_url
    kms            = var.aws_endpoint_url
    sns            = var.aws_endpoint_url
    ssm            = var.aws_endpoint_url
    sts            = var.aws_endpoint_url
  }

  default_tags {
    tags = local.common_tags
  }
}
