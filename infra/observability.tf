# Metrics, alarms and dashboard: the CloudWatch agent on each instance scrapes the gateway's and
# TorchServe's /metrics on 127.0.0.1 and writes them as embedded metric format (EMF) log events;
# CloudWatch turns the declared ones into metrics. Alarms go to one SNS topic.

data "aws_caller_identity" "current" {}

locals {
  metrics_namespace = "${var.project_name}/${var.environment}"

  # Every metric the agent publishes, in one place (the alarms, the dashboard and the agent's
  # configuration read it): key => Prometheus name, scrape job, CloudWatch unit, and the
  # dimension sets (Prometheus label names) it is published with. Each distinct set of
  # dimension values is one custom metric. Counters arrive as the delta between two scrapes
  # (use Sum); gauges as their value at each scrape, one point per instance and scrape (use
  # Average: per instance, whatever the scrape interval). The agent drops Prometheus histograms
  # on EC2: none is listed here.
  agent_metrics = {
    requests           = { job = "gateway", name = "gateway_requests_total", unit = "Count", dimensions = [["job"], ["job", "status"]] }
    images             = { job = "gateway", name = "gateway_images_total", unit = "Count", dimensions = [["job", "outcome"]] }
    rejected           = { job = "gateway", name = "gateway_rejected_inputs_total", unit = "Count", dimensions = [["job", "reason"]] }
    rate_limited       = { job = "gateway", name = "gateway_rate_limited_requests_total", unit = "Count", dimensions = [["job"]] }
    requests_in_flight = { job = "gateway", name = "gateway_requests_in_flight", unit = "Count", dimensions = [["job"]] }
    upstream_in_flight = { job = "gateway", name = "gateway_upstream_in_flight", unit = "Count", dimensions = [["job"]] }
    upstream_slots     = { job = "gateway", name = "gateway_upstream_slots", unit = "Count", dimensions = [["job"]] }
    draining           = { job = "gateway", name = "gateway_draining", unit = "Count", dimensions = [["job"]] }
    ts_requests        = { job = "torchserve", name = "ts_inference_requests_total", unit = "Count", dimensions = [["job"]] }
    ts_inference_us    = { job = "torchserve", name = "ts_inference_latency_microseconds", unit = "Microseconds", dimensions = [["job"]] }
    ts_queue_us        = { job = "torchserve", name = "ts_queue_latency_microseconds", unit = "Microseconds", dimensions = [["job"]] }
    handler_ms         = { job = "torchserve", name = "HandlerTime", unit = "Milliseconds", dimensions = [["job"]] }
    preprocess_s       = { job = "torchserve", name = "handler_preprocess_seconds_total", unit = "Seconds", dimensions = [["job"]] }
    preprocessed       = { job = "torchserve", name = "handler_preprocessed_images_total", unit = "Count", dimensions = [["job"]] }
    inference_s        = { job = "torchserve", name = "handler_inference_seconds_total", unit = "Seconds", dimensions = [["job"]] }
    batches            = { job = "torchserve", name = "handler_inference_batches_total", unit = "Count", dimensions = [["job"]] }
  }

  # gateway_requests_total is split by route: the scrape labels each series route_kind = health
  # for these route templates (a draining gateway's 503s are all on its readiness routes) and
  # api for every other route; only api series are published.
  health_split_metric = local.agent_metrics.requests.name
  health_routes       = ["/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"]

  scrape_targets = {
    gateway    = "127.0.0.1:${var.gateway_port}"
    torchserve = "127.0.0.1:${var.torchserve_metrics_port}"
  }

  # Prometheus scrape configuration the agent reads from prometheus_config_path.
  prometheus_config = yamlencode({
    global = {
      scrape_interval = "${var.metrics_scrape_interval_s}s"
      scrape_timeout  = "${min(10, var.metrics_scrape_interval_s)}s"
    }
    scrape_configs = [for job, target in local.scrape_targets : {
      job_name       = job
      metrics_path   = "/metrics"
      static_configs = [{ targets = [target] }]
      metric_relabel_configs = concat(
        # Only what is published reaches the log group (EMF log ingestion is billed per GB).
        [{
          source_labels = ["__name__"]
          regex         = join("|", sort([for m in values(local.agent_metrics) : m.name if m.job == job]))
          action        = "keep"
        }],
        job != local.agent_metrics.requests.job ? [] : [
          {
            source_labels = ["__name__"]
            regex         = local.health_split_metric
            target_label  = "route_kind"
            replacement   = "api"
          },
          {
            source_labels = ["__name__", "route"]
            regex         = "${local.health_split_metric};(${join("|", local.health_routes)})"
            target_label  = "route_kind"
            replacement   = "health"
          },
        ],
      )
    }]
  })

  prometheus_config_path = "/opt/aws/amazon-cloudwatch-agent/etc/prometheus.yaml"

  # The agent's own configuration (amazon-cloudwatch-agent-ctl -a fetch-config -c ssm:...).
  agent_config = jsonencode({
    agent = {
      region = var.aws_region
    }
    logs = {
      force_flush_interval = 5
      metrics_collected = {
        prometheus = {
          log_group_name         = aws_cloudwatch_log_group.metrics.name
          prometheus_config_path = local.prometheus_config_path
          emf_processor = {
            metric_namespace = local.metrics_namespace
            metric_unit      = { for m in values(local.agent_metrics) : m.name => m.unit }
            metric_declaration = [for m in values(local.agent_metrics) : {
              source_labels    = m.name == local.health_split_metric ? ["job", "route_kind"] : ["job"]
              label_matcher    = m.name == local.health_split_metric ? "^${m.job};api$" : "^${m.job}$"
              dimensions       = m.dimensions
              metric_selectors = ["^${m.name}$"]
            }]
          }
        }
      }
    }
  })
}

# Both configurations are read by the instance at boot with its role (user_data stays small).
resource "aws_ssm_parameter" "agent_config" {
  name        = "${local.ssm_prefix}/cloudwatch_agent_config"
  description = "CloudWatch agent configuration (JSON): Prometheus scrape of the gateway and TorchServe into EMF"
  type        = "String"
  tier        = "Standard" # 4 KB: the tests measure the value
  value       = local.agent_config
}

resource "aws_ssm_parameter" "prometheus_config" {
  name        = "${local.ssm_prefix}/cloudwatch_agent_prometheus"
  description = "Prometheus scrape configuration (YAML) of the CloudWatch agent"
  type        = "String"
  tier        = "Standard"
  value       = local.prometheus_config
}

# The EMF events the agent writes; CloudWatch extracts the declared metrics from them.
resource "aws_cloudwatch_log_group" "metrics" {
  name              = "/${var.project_name}/${var.environment}/metrics"
  retention_in_days = 7
}

# ---------------------------------------------------------------------------
# Alarms → SNS
# ---------------------------------------------------------------------------

resource "aws_sns_topic" "alarms" {
  name = "${local.name}-alarms"
}

resource "aws_sns_topic_subscription" "alarm_email" {
  count = var.alarm_email == null ? 0 : 1

  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

locals {
  apigw_dimensions = { ApiName = aws_api_gateway_rest_api.this.name, Stage = aws_api_gateway_stage.this.stage_name }
  asg_dimensions   = { AutoScalingGroupName = aws_autoscaling_group.this.name }
  nlb_dimensions   = { LoadBalancer = aws_lb.internal.arn_suffix, TargetGroup = aws_lb_target_group.gateway.arn_suffix }
  gateway_job      = { job = local.agent_metrics.requests.job }
  runbook          = "Runbook: infra/README.md, Alarms and dashboard."

  # Every alarm: key => what it says, the comparison, and the metric queries (id => metric, or an
  # expression over the others; the one named by `alarm` is compared). Periods are 1 minute and
  # 3 bad minutes out of 5 raise it, unless `window` / `breaching` / `period` say otherwise.
  alarms = merge(
    {
      apigw_5xx_rate = {
        description = "More than ${var.alarm_error_rate_percent}% of API Gateway requests answered 5xx (the gateway's 5xx, or API Gateway's own 504 after ${var.api_integration_timeout_ms} ms)."
        comparison  = "GreaterThanThreshold"
        threshold   = var.alarm_error_rate_percent / 100
        missing     = "notBreaching"
        alarm       = "errors"
        metrics     = { errors = { namespace = "AWS/ApiGateway", name = "5XXError", dimensions = local.apigw_dimensions, stat = "Average" } }
      }
      apigw_latency_p99 = {
        description = "API Gateway p99 latency above ${var.alarm_latency_p99_ms} ms; at ${var.api_integration_timeout_ms} ms API Gateway gives up with a 504."
        comparison  = "GreaterThanThreshold"
        threshold   = var.alarm_latency_p99_ms
        missing     = "notBreaching"
        alarm       = "latency"
        metrics     = { latency = { namespace = "AWS/ApiGateway", name = "Latency", dimensions = local.apigw_dimensions, stat = "p99" } }
      }
      # Healthy targets + instances in standby: a deploy's instance is in standby while it is out, so
      # the sum stays at the minimum through a deploy; a lost or failing instance lowers it.
      healthy_hosts_below_min = {
        description = "Fewer healthy NLB targets (plus instances in deploy standby) than the group's minimum of ${var.asg_min_size}."
        comparison  = "LessThanThreshold"
        threshold   = var.asg_min_size
        missing     = "breaching"
        alarm       = "serving"
        expression  = "healthy + FILL(standby, 0)"
        metrics = {
          healthy = { namespace = "AWS/NetworkELB", name = "HealthyHostCount", dimensions = local.nlb_dimensions, stat = "Minimum" }
          standby = { namespace = "AWS/AutoScaling", name = "GroupStandbyInstances", dimensions = local.asg_dimensions, stat = "Maximum" }
        }
      }
      asg_at_max = {
        description = "The Auto Scaling group has run at its maximum size for 15 minutes: scaling cannot add capacity."
        comparison  = "GreaterThanOrEqualToThreshold"
        threshold   = 0
        missing     = "notBreaching"
        window      = 15
        breaching   = 15
        alarm       = "headroom"
        expression  = "in_service - max_size"
        metrics = {
          in_service = { namespace = "AWS/AutoScaling", name = "GroupInServiceInstances", dimensions = local.asg_dimensions, stat = "Maximum" }
          max_size   = { namespace = "AWS/AutoScaling", name = "GroupMaxSize", dimensions = local.asg_dimensions, stat = "Maximum" }
        }
      }
    },
    # The gateway's 503 and 504 answers on API routes (health routes are never published, so a
    # draining gateway's 503 on /readyz counts nowhere), as a percentage of its API requests.
    # server-busy, model-unavailable (503) and upstream-timeout (504) all count: a client was failed.
    { for status in ["503", "504"] : "gateway_${status}_rate" => {
      description = "More than ${var.alarm_error_rate_percent}% of the gateway's API requests (health routes excluded) answered ${status}."
      comparison  = "GreaterThanThreshold"
      threshold   = var.alarm_error_rate_percent
      missing     = "notBreaching"
      alarm       = "rate"
      expression  = "IF(requests > 0, 100 * FILL(failed, 0) / requests, 0)"
      metrics = {
        failed   = { namespace = local.metrics_namespace, name = local.agent_metrics.requests.name, dimensions = merge(local.gateway_job, { status = status }), stat = "Sum" }
        requests = { namespace = local.metrics_namespace, name = local.agent_metrics.requests.name, dimensions = local.gateway_job, stat = "Sum" }
      }
    } },
    var.no_traffic_alarm_minutes == 0 ? {} : {
      no_traffic = {
        description = "API Gateway counted no request for ${var.no_traffic_alarm_minutes} minutes."
        comparison  = "LessThanThreshold"
        threshold   = 1
        missing     = "breaching" # no request at all: no data point at all
        period      = 300
        window      = var.no_traffic_alarm_minutes / 5
        breaching   = var.no_traffic_alarm_minutes / 5
        alarm       = "requests"
        metrics     = { requests = { namespace = "AWS/ApiGateway", name = "Count", dimensions = local.apigw_dimensions, stat = "Sum" } }
      }
    },
  )

  alarm_names = { for key in keys(local.alarms) : key => "${local.name}-${replace(key, "_", "-")}" }
  # Known at plan time (the dashboard's alarm widget lists them), unlike the resources' arn.
  alarm_arn_prefix = "arn:${data.aws_partition.current.partition}:cloudwatch:${var.aws_region}:${data.aws_caller_identity.current.account_id}:alarm:"
}

resource "aws_cloudwatch_metric_alarm" "this" {
  for_each = local.alarms

  alarm_name          = local.alarm_names[each.key]
  alarm_description   = "${each.value.description} ${local.runbook}"
  comparison_operator = each.value.comparison
  threshold           = each.value.threshold
  treat_missing_data  = each.value.missing
  evaluation_periods  = try(each.value.window, 5)
  datapoints_to_alarm = try(each.value.breaching, 3)
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  dynamic "metric_query" {
    for_each = try(each.value.expression, null) == null ? {} : { (each.value.alarm) = each.value.expression }
    content {
      id          = metric_query.key
      expression  = metric_query.value
      return_data = true
    }
  }

  dynamic "metric_query" {
    for_each = each.value.metrics
    content {
      id          = metric_query.key
      return_data = metric_query.key == each.value.alarm ? true : null
      metric {
        namespace   = metric_query.value.namespace
        metric_name = metric_query.value.name
        dimensions  = metric_query.value.dimensions
        stat        = metric_query.value.stat
        period      = try(each.value.period, 60)
      }
    }
  }
}

# ---------------------------------------------------------------------------
# Dashboard: traffic, errors by kind, latency per stage, capacity
# ---------------------------------------------------------------------------

locals {
  # [namespace, name, dimension, value, ...] rows of the agent's metrics, by key.
  agent_row = { for key, m in local.agent_metrics : key => [local.metrics_namespace, m.name, "job", m.job] }
  apigw_row = ["ApiName", aws_api_gateway_rest_api.this.name, "Stage", aws_api_gateway_stage.this.stage_name]
  asg_row   = ["AutoScalingGroupName", aws_autoscaling_group.this.name]

  # SEARCH over one of the agent's metrics by a label: one line per value seen (status, reason, ...).
  agent_search = { for key, m in local.agent_metrics : key => {
    for dims in m.dimensions : join(",", dims) => "SEARCH('{\"${local.metrics_namespace}\",${join(",", dims)}} MetricName=\"${m.name}\"', 'Sum', 60)"
  } }

  dashboard_widgets = [
    {
      title = "Traffic (requests per minute)"
      metrics = [
        concat(["AWS/ApiGateway", "Count"], local.apigw_row),
        concat(local.agent_row.requests, [{ label = "gateway API requests" }]),
        concat(local.agent_row.ts_requests, [{ label = "TorchServe inferences" }]),
      ]
      stat = "Sum"
    },
    {
      title   = "Images by outcome"
      metrics = [[{ expression = local.agent_search.images["job,outcome"], id = "outcome" }]]
      stat    = "Sum"
    },
    {
      title = "Errors: API Gateway"
      metrics = [
        concat(["AWS/ApiGateway", "4XXError"], local.apigw_row),
        concat(["AWS/ApiGateway", "5XXError"], local.apigw_row),
      ]
      stat = "Sum"
    },
    {
      title   = "Errors: gateway answers by status (API routes)"
      metrics = [[{ expression = local.agent_search.requests["job,status"], id = "status" }]]
      stat    = "Sum"
    },
    {
      title = "Errors: rejected inputs by problem type, rate limited"
      metrics = [
        [{ expression = local.agent_search.rejected["job,reason"], id = "reason" }],
        concat(local.agent_row.rate_limited, [{ label = "rate limited" }]),
      ]
      stat = "Sum"
    },
    {
      title = "Latency: API Gateway and its integration (gateway and below), ms"
      metrics = [
        concat(["AWS/ApiGateway", "Latency"], local.apigw_row, [{ stat = "p50" }]),
        concat(["AWS/ApiGateway", "Latency"], local.apigw_row, [{ stat = "p99" }]),
        concat(["AWS/ApiGateway", "IntegrationLatency"], local.apigw_row, [{ stat = "p50" }]),
        concat(["AWS/ApiGateway", "IntegrationLatency"], local.apigw_row, [{ stat = "p99" }]),
      ]
      stat        = "p99"
      annotations = { horizontal = [{ label = "integration timeout", value = var.api_integration_timeout_ms }] }
    },
    {
      title = "Latency: TorchServe queue and inference per request, handler (ms)"
      metrics = [
        [{ expression = "ts_queue / 1000 / ts_requests", label = "TorchServe queue", id = "queue" }],
        [{ expression = "ts_inference / 1000 / ts_requests", label = "TorchServe inference (incl. handler)", id = "inference" }],
        concat(local.agent_row.ts_queue_us, [{ id = "ts_queue", visible = false, stat = "Sum" }]),
        concat(local.agent_row.ts_inference_us, [{ id = "ts_inference", visible = false, stat = "Sum" }]),
        concat(local.agent_row.ts_requests, [{ id = "ts_requests", visible = false, stat = "Sum" }]),
        concat(local.agent_row.handler_ms, [{ label = "handler time per batch", stat = "Average" }]),
      ]
      stat = "Average"
    },
    {
      title = "Latency: decode + preprocess per image, inference per batch (s); images per batch"
      metrics = [
        [{ expression = "preprocess_s / preprocessed", label = "decode + preprocess per image", id = "per_image" }],
        [{ expression = "inference_s / batches", label = "inference per batch", id = "per_batch" }],
        [{ expression = "preprocessed / batches", label = "images per batch", id = "images_per_batch", yAxis = "right" }],
        concat(local.agent_row.preprocess_s, [{ id = "preprocess_s", visible = false, stat = "Sum" }]),
        concat(local.agent_row.preprocessed, [{ id = "preprocessed", visible = false, stat = "Sum" }]),
        concat(local.agent_row.inference_s, [{ id = "inference_s", visible = false, stat = "Sum" }]),
        concat(local.agent_row.batches, [{ id = "batches", visible = false, stat = "Sum" }]),
      ]
      stat = "Sum"
    },
    {
      title = "Capacity: instances"
      metrics = [
        concat(["AWS/AutoScaling", "GroupInServiceInstances"], local.asg_row),
        concat(["AWS/AutoScaling", "GroupStandbyInstances"], local.asg_row),
        concat(["AWS/AutoScaling", "GroupMaxSize"], local.asg_row),
        # The NLB's dimension values hold ids known only after apply: found by the target group's name.
        [{ expression = "SEARCH('{AWS/NetworkELB,LoadBalancer,TargetGroup} MetricName=\"HealthyHostCount\" \"${aws_lb_target_group.gateway.name}\"', 'Minimum', 60)", id = "healthy", label = "healthy targets" }],
        concat(local.agent_row.draining, [{ label = "a gateway draining" }]),
      ]
      stat = "Maximum"
    },
    {
      title = "Capacity: in flight (average per instance)"
      metrics = [
        concat(local.agent_row.requests_in_flight, [{ label = "HTTP requests in flight" }]),
        concat(local.agent_row.upstream_in_flight, [{ label = "predictions holding a TorchServe slot" }]),
        concat(local.agent_row.upstream_slots, [{ label = "TorchServe slots (GATEWAY_MAX_CONNECTIONS)" }]),
      ]
      stat = "Average"
    },
    {
      title   = "Capacity: CPU (target tracking at ${var.cpu_target_utilization}%)"
      metrics = [concat(["AWS/EC2", "CPUUtilization"], local.asg_row)]
      stat    = "Average"
    },
  ]
}

resource "aws_cloudwatch_dashboard" "this" {
  dashboard_name = local.name
  dashboard_body = jsonencode({
    widgets = concat(
      [{
        type       = "alarm"
        x          = 0
        y          = 0
        width      = 24
        height     = 3
        properties = { title = "Alarms", alarms = [for name in values(local.alarm_names) : "${local.alarm_arn_prefix}${name}"] }
      }],
      [for i, w in local.dashboard_widgets : {
        type   = "metric"
        x      = (i % 3) * 8
        y      = 3 + floor(i / 3) * 6
        width  = 8
        height = 6
        properties = merge(w, {
          region = var.aws_region
          view   = "timeSeries"
          period = 60
        })
      }],
    )
  })
}
