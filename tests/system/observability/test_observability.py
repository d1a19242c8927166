"""observability/ with real tools: promtool checks the scrape configuration and the alert rules and runs their
unit tests (observability/alerts.test.yml); a real Prometheus scrapes the suite's own gateway and TorchServe
every second, evaluates the rules, and every metric name the rules and the Grafana dashboard query is one it
scraped. Debian's `prometheus` package has both programs; without them the tests skip, but fail under CI
(.ci/run and ci.yml install it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from imagegen import jpeg, truncated_jpeg
from support import Gateway, metrics_url, post

from handlers.timing import COUNTERS
from modelserver.paths import REPO_ROOT
from modelserver.ports import free_port
from modelserver.torchserve import TorchServe

OBSERVABILITY = REPO_ROOT / "observability"
CONFIG, RULES, RULE_TESTS = (OBSERVABILITY / n for n in ("prometheus.yml", "alerts.yml", "alerts.test.yml"))
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"


def program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        problem = f"{name} is not installed (Debian's `prometheus` package; .ci/run and ci.yml install it)"
        if os.environ.get("CI"):
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([program("promtool"), *args], capture_output=True, text=True, timeout=120)


# --- PromQL: the metric names an expression reads ------------------------------------------------------------

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
KEYWORDS = {"bool", "and", "or", "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are neither functions (followed by `(`), keywords,
    label matchers ({...}), label lists (by (...)), ranges ([5m]) nor strings. Grafana's $variables are
    inside matchers or ranges."""
    bare = STRING.sub('""', expr)
    bare = re.sub(r"\{[^}]*\}", " ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    bare = GROUPING.sub(" ", bare)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)\s*(\()?", bare):
        name, call = match.group(1), match.group(2)
        if not call and name.lower() not in KEYWORDS:
            names.add(name)
    return names


def test_metric_names_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(gateway_request_duration_seconds_bucket{route!~"/healthz|'
        '/readyz", status=~"5.."}[$__rate_interval]))) > 20 and on (instance) up{job="gateway"} == 1 '
        "or vector(0) unless sum without (le) (x:recorded offset 5m) / ignoring(a) group_left(b) y_total"
    )
    assert metric_names(expr) == {"gateway_request_duration_seconds_bucket", "up", "x:recorded", "y_total"}


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def rule_expressions() -> dict[str, str]:
    return {rule.get("alert") or rule["record"]: rule["expr"] for rule in rules()}


def panels(items: list[dict]) -> Iterator[dict]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard_targets() -> list[dict]:
    board = json.loads(DASHBOARD.read_text())
    return [target for panel in panels(board["panels"]) for target in panel.get("targets", [])]


def dashboard_expressions() -> list[str]:
    return [target["expr"] for target in dashboard_targets()]


# --- promtool -------------------------------------------------------------------------------------------------


def test_scrape_config_is_valid() -> None:
    done = promtool("check", "config", str(CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and RULES.name in done.stdout, "the configuration loads the alert rules"


def test_alert_rules_are_valid() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rule_unit_tests_pass() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_fires_in_a_unit_test_and_stays_quiet_in_another() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    fired, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts and alerts == fired, f"alerts never made to fire: {alerts - fired}"
    assert alerts == quiet, f"alerts never checked quiet on a healthy series: {alerts - quiet}"


def test_dashboard_is_grafana_json_with_the_views() -> None:
    board = json.loads(DASHBOARD.read_text())
    titles = " ".join(panel["title"].lower() for panel in panels(board["panels"]))
    for view in ("traffic", "errors", "latency", "queue", "preprocess", "inference", "in flight", "slots"):
        assert view in titles, f"no panel for {view}"
    targets = dashboard_targets()
    assert targets and all(t["datasource"]["uid"] == "${datasource}" and t["expr"] for t in targets)
    assert any(v["name"] == "datasource" and v["type"] == "datasource" for v in board["templating"]["list"])


# --- a real Prometheus against the suite's gateway and TorchServe ---------------------------------------------


class Prometheus:
    """Debian's Prometheus on a free loopback port with a temporary storage folder, stopped after the block."""

    def __init__(self, folder: Path, targets: dict[str, str]) -> None:
        config = yaml.safe_load(CONFIG.read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(RULES)]
        for job in config["scrape_configs"]:
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        self.config = folder / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Prometheus:
        data = self.folder / "data"
        args = [
            program("prometheus"),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.log = (self.folder / "prometheus.log").open("w")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(300):
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.__exit__()
        pytest.fail(f"Prometheus did not start: {(self.folder / 'prometheus.log').read_text()[-2000:]}")

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()

    def api(self, path: str, **params: str) -> object:
        answer = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        assert answer["status"] == "success", answer
        return answer["data"]


def test_prometheus_scrapes_every_metric_the_dashboard_and_the_rules_query(
    gateway: Gateway, torchserve: TorchServe, api_key: str, tmp_path: Path
) -> None:
    """Both targets up; the traffic a user makes (a classified image, one the handler rejects) gives every name the
    rules and the dashboard use, none of them missing; the rules evaluate without an error on real data."""
    targets = {"gateway": urlsplit(gateway.url).netloc, "torchserve": urlsplit(metrics_url(torchserve)).netloc}
    wanted = set().union(*map(metric_names, [*rule_expressions().values(), *dashboard_expressions()]))
    assert {"up", "gateway_requests_total", *COUNTERS} <= wanted, "the handler's four counters among them"
    with Prometheus(tmp_path, targets) as prometheus:
        scraped: set[str] = set()
        for _ in range(60):
            assert post(gateway, api_key, content=jpeg(), headers={"Content-Type": "image/jpeg"}).status_code == 200
            # cut short: past the gateway's header checks, refused by the handler (TorchServe's 4xx)
            cut = post(gateway, api_key, content=truncated_jpeg(), headers={"Content-Type": "image/jpeg"})
            assert cut.status_code == 422, cut.text
            scraped = set(prometheus.api("label/__name__/values"))  # type: ignore[arg-type]
            if wanted <= scraped:
                break
            time.sleep(1)
        assert wanted <= scraped, f"queried but never scraped: {sorted(wanted - scraped)}"
        health = prometheus.api("targets")["activeTargets"]  # type: ignore[index]
        assert {t["labels"]["job"]: t["health"] for t in health} == {"gateway": "up", "torchserve": "up"}
        time.sleep(2)  # at least one evaluation of every rule on the scraped data
        groups = prometheus.api("rules")["groups"]  # type: ignore[index]
        rules = [rule for group in groups for rule in group["rules"]]
        assert {r["name"] for r in rules} == set(rule_expressions())
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
