# REST API (API Gateway v1): the only public entry point. Everything is forwarded
# over a VPC link to the internal NLB; every method requires an API Gateway key.

resource "aws_api_gateway_vpc_link" "this" {
  name        = local.name
  description = "${local.name}: API Gateway to the internal NLB"
  target_arns = [aws_lb.internal.arn]
}

resource "aws_api_gateway_rest_api" "this" {
  name        = local.name
  description = "${local.name} image classification API"

  # Every body is binary: request and response bytes pass through the HTTP_PROXY integration
  # unchanged whatever their content type (octet-stream uploads, v2's binary extension, PNG
  # overlays, JSON). The MOCK health integrations convert to text explicitly (below).
  binary_media_types = ["*/*"]

  endpoint_configuration {
    types = ["REGIONAL"]
  }
}

locals {
  nlb_base_url = "http://${aws_lb.internal.dns_name}:${aws_lb_listener.gateway.port}"
  # Paths answered at the edge unless forwarded (path => forwarded). /metrics never is: the
  # CloudWatch agent scrapes it on the instance's loopback, and it is nobody's business outside.
  edge_paths = {
    healthz = var.expose_health_endpoints
    readyz  = var.expose_health_endpoints
    metrics = false
  }
}

# --- /{proxy+}: everything the gateway serves -----------------------------------------

resource "aws_api_gateway_resource" "proxy" {
  rest_api_id = aws_api_gateway_rest_api.this.id
  parent_id   = aws_api_gateway_rest_api.this.root_resource_id
  path_part   = "{proxy+}"
}

resource "aws_api_gateway_method" "proxy" {
  rest_api_id      = aws_api_gateway_rest_api.this.id
  resource_id      = aws_api_gateway_resource.proxy.id
  http_method      = "ANY"
  authorization    = "NONE"
  api_key_required = true

  request_parameters = {
    "method.request.path.proxy" = true
  }
}

resource "aws_api_gateway_integration" "proxy" {
  rest_api_id             = aws_api_gateway_rest_api.this.id
  resource_id             = aws_api_gateway_resource.proxy.id
  http_method             = aws_api_gateway_method.proxy.http_method
  type                    = "HTTP_PROXY"
  integration_http_method = "ANY"
  uri                     = "${local.nlb_base_url}/{proxy}"
  connection_type         = "VPC_LINK"
  connection_id           = aws_api_gateway_vpc_link.this.id
  timeout_milliseconds    = var.api_integration_timeout_ms

  request_parameters = {
    "integration.request.path.proxy" = "method.request.path.proxy"
  }
}

# --- /healthz, /readyz and /metrics ---------------------------------------------------
# Explicit resources take precedence over {proxy+}. Unless forwarded (the health paths with
# expose_health_endpoints) they are answered at the edge with 404 (MOCK) and never reach the
# instances.

resource "aws_api_gateway_resource" "health" {
  for_each = local.edge_paths

  rest_api_id = aws_api_gateway_rest_api.this.id
  parent_id   = aws_api_gateway_rest_api.this.root_resource_id
  path_part   = each.key
}

resource "aws_api_gateway_method" "health" {
  for_each = local.edge_paths

  rest_api_id      = aws_api_gateway_rest_api.this.id
  resource_id      = aws_api_gateway_resource.health[each.key].id
  http_method      = "ANY"
  authorization    = "NONE"
  api_key_required = true
}

resource "aws_api_gateway_integration" "health" {
  for_each = local.edge_paths

  rest_api_id = aws_api_gateway_rest_api.this.id
  resource_id = aws_api_gateway_resource.health[each.key].id
  http_method = aws_api_gateway_method.health[each.key].http_method

  type                    = each.value ? "HTTP_PROXY" : "MOCK"
  integration_http_method = each.value ? "GET" : null
  uri                     = each.value ? "${local.nlb_base_url}/${each.key}" : null
  connection_type         = each.value ? "VPC_LINK" : "INTERNET"
  connection_id           = each.value ? aws_api_gateway_vpc_link.this.id : null
  timeout_milliseconds    = var.api_integration_timeout_ms

  passthrough_behavior = each.value ? null : "NEVER"
  # With binary_media_types = ["*/*"] every request body counts as binary, and a MOCK's mapping
  # template is not applied to a binary body: convert it to text so the template below answers.
  content_handling = each.value ? null : "CONVERT_TO_TEXT"
  request_templates = each.value ? null : {
    "application/json" = jsonencode({ statusCode = 404 })
  }
}

resource "aws_api_gateway_method_response" "health_not_found" {
  for_each = { for path, forwarded in local.edge_paths : path => forwarded if !forwarded }

  rest_api_id = aws_api_gateway_rest_api.this.id
  resource_id = aws_api_gateway_resource.health[each.key].id
  http_method = aws_api_gateway_method.health[each.key].http_method
  status_code = "404"
}

resource "aws_api_gateway_integration_response" "health_not_found" {
  for_each = { for path, forwarded in local.edge_paths : path => forwarded if !forwarded }

  rest_api_id = aws_api_gateway_rest_api.this.id
  resource_id = aws_api_gateway_resource.health[each.key].id
  http_method = aws_api_gateway_method.health[each.key].http_method
  status_code = aws_api_gateway_method_response.health_not_found[each.key].status_code

  # The answer is the template's text, never base64-decoded as a binary body would be.
  content_handling = "CONVERT_TO_TEXT"

  response_templates = {
    "application/json" = jsonencode({ message = "Not Found" })
  }

  depends_on = [aws_api_gateway_integration.health]
}

# --- Deployment and stage -------------------------------------------------------------

resource "aws_api_gateway_deployment" "this" {
  rest_api_id = aws_api_gateway_rest_api.this.id

  triggers = {
    redeployment = sha1(jsonencode([
      aws_api_gateway_rest_api.this.binary_media_types,
      aws_api_gateway_resource.proxy,
      aws_api_gateway_method.proxy,
      aws_api_gateway_integration.proxy,
      aws_api_gateway_resource.health,
      aws_api_gateway_method.health,
      aws_api_gateway_integration.health,
      aws_api_gateway_integration_response.health_not_found,
    ]))
  }

  lifecycle {
    create_before_destroy = true
  }

  depends_on = [
    aws_api_gateway_integration.proxy,
    aws_api_gateway_integration.health,
    aws_api_gateway_integration_response.health_not_found,
  ]
}

resource "aws_cloudwatch_log_group" "api_access" {
  name              = "/${var.project_name}/${var.environment}/apigateway-access"
  retention_in_days = var.log_retention_days
}

resource "aws_api_gateway_stage" "this" {
  rest_api_id   = aws_api_gateway_rest_api.this.id
  deployment_id = aws_api_gateway_deployment.this.id
  stage_name    = var.stage_name

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.api_access.arn
    format = jsonencode({
      requestId          = "$context.requestId"
      requestTime        = "$context.requestTime"
      sourceIp           = "$context.identity.sourceIp"
      userAgent          = "$context.identity.userAgent"
      apiKeyId           = "$context.identity.apiKeyId"
      httpMethod         = "$context.httpMethod"
      path               = "$context.path"
      status             = "$context.status"
      responseLength     = "$context.responseLength"
      responseLatency    = "$context.responseLatency"
      integrationStatus  = "$context.integration.status"
      integrationLatency = "$context.integration.latency"
      errorMessage       = "$context.error.message"
    })
  }

  depends_on = [aws_api_gateway_account.this]
}

resource "aws_api_gateway_method_settings" "all" {
  rest_api_id = aws_api_gateway_rest_api.this.id
  stage_name  = aws_api_gateway_stage.this.stage_name
  method_path = "*/*"

  settings {
    metrics_enabled        = true
    logging_level          = "ERROR"
    data_trace_enabled     = false
    throttling_rate_limit  = var.stage_throttle_rate_limit
    throttling_burst_limit = var.stage_throttle_burst_limit
  }
}

# --- Usage plan and the first API key ------------------------------------------------

resource "aws_api_gateway_usage_plan" "this" {
  name        = "${local.name}-default"
  description = "Per-consumer throttling and quota for ${local.name}"

  api_stages {
    api_id = aws_api_gateway_rest_api.this.id
    stage  = aws_api_gateway_stage.this.stage_name
  }

  throttle_settings {
    rate_limit  = var.api_throttle_rate_limit
    burst_limit = var.api_throttle_burst_limit
  }

  quota_settings {
    limit  = var.api_quota_limit
    period = var.api_quota_period
  }
}

resource "aws_api_gateway_api_key" "default" {
  name        = "${local.name}-default"
  description = "First consumer key for ${local.name} (metering and throttling only; the gateway key authenticates)"
  enabled     = true
}

resource "aws_api_gateway_usage_plan_key" "default" {
  key_id        = aws_api_gateway_api_key.default.id
  key_type      = "API_KEY"
  usage_plan_id = aws_api_gateway_usage_plan.this.id
}

# --- Account-wide CloudWatch role (needed for access and execution logs) -------------

data "aws_iam_policy_document" "apigw_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["apigateway.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "apigw_cloudwatch" {
  count = var.manage_api_gateway_account ? 1 : 0

  name               = "${local.name}-apigw-cloudwatch"
  assume_role_policy = data.aws_iam_policy_document.apigw_assume.json
}

resource "aws_iam_role_policy_attachment" "apigw_cloudwatch" {
  count = var.manage_api_gateway_account ? 1 : 0

  role       = aws_iam_role.apigw_cloudwatch[0].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
}

resource "aws_api_gateway_account" "this" {
  count = var.manage_api_gateway_account ? 1 : 0

  cloudwatch_role_arn = aws_iam_role.apigw_cloudwatch[0].arn

  depends_on = [aws_iam_role_policy_attachment.apigw_cloudwatch]
}
