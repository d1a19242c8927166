output "invoke_url" {
  description = "Base URL of the API (the stage). Append the gateway routes, e.g. $URL/v1/predict."
  value       = aws_api_gateway_stage.this.invoke_url
}

output "api_key_id" {
  description = "Id of the first API Gateway key (never the value): aws apigateway get-api-key --api-key ID --include-value --query value --output text"
  value       = aws_api_gateway_api_key.default.id
}

output "usage_plan_id" {
  description = "Usage plan that new consumer API keys are attached to."
  value       = aws_api_gateway_usage_plan.this.id
}

output "autoscaling_group_name" {
  description = "Name of the Auto Scaling group running the instances."
  value       = aws_autoscaling_group.this.name
}

output "instance_target_tag" {
  description = "Tag that marks the instances (for SSM Run Command targets in the deploy workflow)."
  value       = { key = "Project", value = var.project_name }
}

output "log_group_name" {
  description = "CloudWatch log group receiving the container logs (stream per instance/container)."
  value       = aws_cloudwatch_log_group.containers.name
}

output "access_log_group_name" {
  description = "CloudWatch log group receiving the API Gateway access logs."
  value       = aws_cloudwatch_log_group.api_access.name
}

output "ssm_parameter_prefix" {
  description = "SSM Parameter Store path of the runtime configuration (image references, API key hashes)."
  value       = local.ssm_prefix
}

output "nlb_dns_name" {
  description = "DNS name of the internal NLB (reachable only inside the VPC)."
  value       = aws_lb.internal.dns_name
}

output "alarm_topic_arn" {
  description = "SNS topic every alarm notifies (and tells when it is OK again): subscribe a pager or chat integration to it."
  value       = aws_sns_topic.alarms.arn
}

output "dashboard_url" {
  description = "CloudWatch dashboard: traffic, errors by kind, latency per stage, capacity, the alarms."
  value       = "https://${var.aws_region}.console.aws.amazon.com/cloudwatch/home?region=${var.aws_region}#dashboards/dashboard/${aws_cloudwatch_dashboard.this.dashboard_name}"
}
