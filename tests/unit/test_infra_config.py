"""The monitoring and deployment configuration under infra/ agrees with the service.

Dashboards and alerts may only name series that telemetry.metrics exports (plus Prometheus'
``up``); every alert has a firing unit test; the Prometheus files pass ``promtool`` and the
compose file passes ``docker compose config`` when those tools are installed (skipped, with the
reason, when they are not); and the files refer to each other consistently (scrape targets,
mounts, ports, provisioning paths).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from telemetry.metrics import REGISTRY, SERIES_NAMES

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
PROMETHEUS = INFRA / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
ALERTMANAGER = INFRA / "alertmanager" / "alertmanager.yml"
GRAFANA = INFRA / "grafana"
DASHBOARD_DIR = GRAFANA / "dashboards"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))
COMPOSE = INFRA / "compose" / "docker-compose.yml"
COLLECTOR = INFRA / "otel" / "collector.yaml"

ALLOWED_SERIES = SERIES_NAMES | {"up"}
UAIT_IDENTIFIER = re.compile(r"uait_[a-z0-9_]+")

# --- PromQL: which metric names does an expression use? -------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\]")
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_TOKENS = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*|\d[\w.]*")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
}
_LABEL_VALUES = re.compile(r"^\s*label_values\s*\((?P<args>.*)\)\s*$", re.DOTALL)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (not functions, labels, strings or durations)."""
    text = _STRINGS.sub('""', expr)
    text = _GRAFANA_VARIABLE.sub("", text)
    text = _LABEL_MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _LABEL_LISTS.sub(" ", text)
    names = set()
    for token in _TOKENS.finditer(text):
        word = token.group()
        if word[0].isdigit() or word.lower() in _KEYWORDS:
            continue
        if re.match(r"\s*\(", text[token.end() :]):
            continue  # a function call (or an aggregation)
        names.add(word)
    return names


def variable_query_expr(query: Any) -> str:
    """The PromQL inside a Grafana query variable (label_values(expr, label) -> expr)."""
    text = query.get("query", "") if isinstance(query, dict) else str(query or "")
    match = _LABEL_VALUES.match(text)
    if not match:
        return text
    args = match.group("args")
    expr, _, _label = args.rpartition(",")
    return expr if expr else ""  # label_values(label) names no metric


def unknown_series(expr: str) -> set[str]:
    used = metric_names(expr) | set(UAIT_IDENTIFIER.findall(expr))
    return used - ALLOWED_SERIES


# --- Grafana ---------------------------------------------------------------------------------


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(all_panels(panel.get("panels", [])))
    return found


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every panel target and every query variable of a dashboard."""
    exprs = []
    for panel in all_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if "expr" in target:
                exprs.append((f"panel {panel.get('title')!r}", target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            expr = variable_query_expr(variable.get("query"))
            exprs.append((f"variable ${variable['name']}", expr))
    return exprs


# --- Prometheus rules --------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule
    ]


def alert_rule_tests() -> list[dict[str, Any]]:
    return [case for test in load_yaml(ALERTS_TEST)["tests"] for case in test["alert_rule_test"]]


# --- compose -----------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of each bind mount (named volumes are left out)."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((volume["source"], volume["target"]))
            continue
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/", "~")):
            mounts.append((source, target))
    return mounts


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {name: {} for name in deps}
    return {name: (spec or {}) for name, spec in deps.items()}


# --- external tools ----------------------------------------------------------------------------


def run_tool(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed: apt-get install prometheus")
    return path


@pytest.fixture
def amtool() -> str:
    path = shutil.which("amtool")
    if path is None:
        pytest.skip("amtool not installed: apt-get install prometheus-alertmanager")
    return path


@pytest.fixture
def compose_cli() -> list[str]:
    docker = shutil.which("docker")
    if docker and run_tool(docker, "compose", "version").returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    pytest.skip("docker compose not installed: apt-get install docker-compose")


# ===============================================================================================
# The expression checker itself


def test_the_metric_name_checker_finds_metrics_and_ignores_functions_labels_and_durations():
    expr = (
        'sum by (le, route) (rate(uait_http_request_duration_seconds_bucket{route=~"$route", '
        'job="uait_not_a_metric"}[$__rate_interval])) / on (job) group_left '
        'up{job="x"} > 0.5 and foo_bar offset 5m'
    )
    assert metric_names(expr) == {"uait_http_request_duration_seconds_bucket", "up", "foo_bar"}


def test_the_checker_rejects_a_series_the_service_does_not_export():
    assert unknown_series("rate(uait_dlq_messages_total[5m])") == {"uait_dlq_messages_total"}
    assert unknown_series("histogram_quantile(0.99, rate(uait_http_requests_total[5m]))") == set()
    assert unknown_series("sum(some_other_exporter_metric)") == {"some_other_exporter_metric"}


def test_a_label_values_variable_is_checked_by_its_metric_not_its_label():
    assert variable_query_expr("label_values(uait_commands_total, context)") == (
        "uait_commands_total"
    )
    assert variable_query_expr({"query": "label_values(route)"}) == ""


# ===============================================================================================
# Grafana


def test_there_are_the_four_dashboards():
    assert {p.name for p in DASHBOARDS} == {
        "overview.json",
        "pipeline.json",
        "projections.json",
        "edge.json",
    }


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_is_json_with_a_title_a_uid_and_panels(path: Path):
    dashboard = load_dashboard(path)
    assert dashboard["title"].strip()
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"])
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = all_panels(dashboard["panels"])
    assert [p for p in panels if p["type"] != "row"], "no panels besides rows"
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"{panel['title']!r} is wider than the grid"


def test_dashboard_uids_and_titles_are_unique():
    dashboards = [load_dashboard(p) for p in DASHBOARDS]
    assert len({d["uid"] for d in dashboards}) == len(dashboards)
    assert len({d["title"] for d in dashboards}) == len(dashboards)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_queries_the_prometheus_chosen_by_its_ds_prometheus_variable(path: Path):
    dashboard = load_dashboard(path)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for panel in all_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel[
            "title"
        ]
        assert panel["targets"], f"{panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{panel['title']!r} has an empty query"
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_expression_names_only_exported_series(path: Path):
    exprs = dashboard_exprs(load_dashboard(path))
    assert exprs
    bad = {where: sorted(unknown_series(expr)) for where, expr in exprs if unknown_series(expr)}
    assert not bad, f"{path.name}: series not in telemetry.metrics.SERIES_NAMES: {bad}"


def test_every_exported_metric_is_on_at_least_one_dashboard():
    used = set()
    for path in DASHBOARDS:
        for _, expr in dashboard_exprs(load_dashboard(path)):
            used |= metric_names(expr)
    # python_info is a constant label set, not something to chart.
    families = {family.name for family in REGISTRY.collect()} - {"python_info"}
    suffixes = {"", "_total", "_bucket", "_sum", "_count"}
    missing = sorted(
        f for f in families if not any(n.startswith(f) and n[len(f) :] in suffixes for n in used)
    )
    assert not missing, f"exported but on no dashboard: {missing}"


def test_the_dashboards_show_what_each_is_for():
    def exprs(name: str) -> str:
        return "\n".join(e for _, e in dashboard_exprs(load_dashboard(DASHBOARD_DIR / name)))

    overview = exprs("overview.json")
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, " in overview
    assert "uait_http_requests_in_flight" in overview
    assert 'status=~"5.."' in overview

    pipeline = exprs("pipeline.json")
    for series in (
        "uait_kafka_messages_published_total",
        "uait_kafka_messages_consumed_total",
        "uait_kafka_consumer_lag",
        "uait_worker_batch_size_bucket",
        "uait_worker_batch_duration_seconds_bucket",
        "uait_commands_total",
        "uait_eventstore_append_batch_events_bucket",
        "uait_eventstore_append_duration_seconds_bucket",
        "uait_eventstore_events_appended_total",
        "uait_worker_batch_failures_total",
        "uait_worker_batch_splits_total",
    ):
        assert series in pipeline, series

    projections = exprs("projections.json")
    assert "rate(uait_projection_events_total" in projections
    for series in (
        "uait_projection_position",
        "uait_projection_head",
        "uait_projection_lag_events",
        "uait_projection_lag_seconds",
        "uait_projection_batch_duration_seconds_bucket",
        "uait_projection_running",
    ):
        assert series in projections, series

    edge = exprs("edge.json")
    for status in ("413", "422", "503"):
        assert f'status="{status}"' in edge
    assert "histogram_quantile(0.99, sum by (le, topic) (rate(uait_kafka_publish_duration" in edge
    assert "sum by (topic, outcome) (rate(uait_kafka_messages_published_total" in edge


def test_grafana_provisioning_points_at_prometheus_and_at_the_mounted_dashboards():
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"

    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "uait.yml")["providers"][0]
    assert provider["type"] == "file"
    grafana = compose()["services"]["grafana"]
    mounted = {target: source for source, target in bind_mounts(grafana)}
    assert provider["options"]["path"] in mounted
    host_dir = (COMPOSE.parent / mounted[provider["options"]["path"]]).resolve()
    assert host_dir == DASHBOARD_DIR.resolve()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_expression_is_valid_promql(promtool: str, path: Path, tmp_path: Path):
    # promtool has no "check expression"; a recording rule per expression does the same.
    substitutions = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
    rules = []
    for i, (where, expr) in enumerate(dashboard_exprs(load_dashboard(path))):
        if not expr:
            continue
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        expr = _GRAFANA_VARIABLE.sub(".*", expr)
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr, "labels": {"at": where}})
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": path.stem, "rules": rules}]}))
    result = run_tool(promtool, "check", "rules", rules_file)
    assert result.returncode == 0, result.stdout + result.stderr


# ===============================================================================================
# Prometheus alerts


def test_every_alert_expression_names_only_exported_series():
    rules = alert_rules()
    assert rules
    bad = {rule["alert"]: sorted(unknown_series(rule["expr"])) for rule in rules}
    assert not {name: names for name, names in bad.items() if names}


def test_every_alert_has_a_severity_a_summary_and_a_description():
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_the_expected_alerts_exist():
    names = {rule["alert"] for rule in alert_rules()}
    assert names >= {
        "IngressErrorBudgetBurn",
        "IngressLatencyBudgetBurn",
        "KafkaConsumerLagGrowing",
        "CommandsRejectedHighRate",
        "WorkerBatchesFailing",
        "ProjectionStopped",
        "ProjectionLagging",
        "ScrapeTargetDown",
    }


def test_every_alert_has_a_firing_case_with_labels_and_annotations_in_alerts_test_yml():
    firing = set()
    for case in alert_rule_tests():
        for expected in case.get("exp_alerts") or []:
            labels = expected.get("exp_labels", {})
            annotations = expected.get("exp_annotations", {})
            assert {"summary", "description"} <= set(annotations), case["alertname"]
            firing.add((case["alertname"], labels.get("severity")))
    required = {(rule["alert"], rule["labels"]["severity"]) for rule in alert_rules()}
    assert not required - firing, f"alerts without a firing test: {sorted(required - firing)}"
    assert not firing - required, f"tests of alerts that do not exist: {sorted(firing - required)}"


def test_the_error_rate_alert_has_a_case_where_it_must_not_fire():
    quiet = [
        case
        for case in alert_rule_tests()
        if case["alertname"] == "IngressErrorBudgetBurn" and not case.get("exp_alerts")
    ]
    assert quiet


def test_the_alert_tests_feed_only_exported_series():
    tests = load_yaml(ALERTS_TEST)
    assert tests["rule_files"] == ["alerts.yml"]
    for test in tests["tests"]:
        for series in test["input_series"]:
            name = series["series"].split("{", 1)[0].strip()
            assert name in ALLOWED_SERIES, name


def test_the_alerts_file_lists_the_alerts_that_are_not_possible_yet():
    header = ALERTS.read_text(encoding="utf-8").split("groups:", 1)[0]
    for topic in ("DLQ", "breaker", "rate limit"):
        assert topic.lower() in header.lower(), topic


def test_prometheus_scrapes_the_three_jobs_and_loads_the_alerts():
    config = load_yaml(PROMETHEUS_CONFIG)
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets == {
        "uait-ingress": ["ingress:8080"],
        "uait-worker": ["worker:9101"],
        "uait-projections": ["projections:9102"],
    }
    assert config["rule_files"] == ["alerts.yml"]
    alertmanagers = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanagers == ["alertmanager:9093"]


def test_promtool_accepts_the_prometheus_config(promtool: str):
    result = run_tool(promtool, "check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules(promtool: str):
    result = run_tool(promtool, "check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_unit_tests_pass_under_promtool(promtool: str):
    result = run_tool(promtool, "test", "rules", ALERTS_TEST)
    assert result.returncode == 0, result.stdout + result.stderr


# ===============================================================================================
# Alertmanager


def test_alertmanager_pages_critical_chats_warning_and_inhibits_warning_under_critical():
    config = load_yaml(ALERTMANAGER)
    receivers = {r["name"] for r in config["receivers"]}
    route = config["route"]
    assert route["receiver"] in receivers
    assert set(route["group_by"]) == {"alertname", "job"}
    by_severity = {tuple(child["matchers"]): child["receiver"] for child in route["routes"]}
    assert by_severity == {('severity="critical"',): "pager", ('severity="warning"',): "chat"}
    for receiver in config["receivers"]:
        assert receiver["webhook_configs"], receiver["name"]
    (inhibit,) = config["inhibit_rules"]
    assert inhibit["source_matchers"] == ['severity="critical"']
    assert inhibit["target_matchers"] == ['severity="warning"']
    assert inhibit["equal"] == ["alertname"]
    severities = {rule["labels"]["severity"] for rule in alert_rules()}
    assert severities <= {"critical", "warning"}, "an alert severity has no route"


def test_amtool_accepts_the_alertmanager_config(amtool: str):
    result = run_tool(amtool, "check-config", ALERTMANAGER)
    assert result.returncode == 0, result.stdout + result.stderr


# ===============================================================================================
# OpenTelemetry Collector


def test_the_collector_pipelines_use_only_defined_components():
    config = load_yaml(COLLECTOR)
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    assert config["exporters"]["otlp/traces"]["endpoint"] == "tempo:4317"
    assert "debug" in config["exporters"]
    for name, pipeline in config["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            undefined = set(pipeline.get(kind, [])) - set(config.get(kind) or {})
            assert not undefined, f"pipeline {name} uses undefined {kind}: {undefined}"
        assert "batch" in pipeline["processors"]


def test_the_services_send_spans_to_the_collectors_otlp_http_port():
    # telemetry.tracing exports with the OTLP/HTTP exporter, which does not speak gRPC.
    http_port = load_yaml(COLLECTOR)["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    http_port = http_port.rsplit(":", 1)[1]
    services = compose()["services"]
    for name in ("ingress", "worker", "projections"):
        endpoint = services[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
        assert endpoint == f"http://otel-collector:{http_port}", name


# ===============================================================================================
# Compose


def test_the_compose_file_passes_docker_compose_config(compose_cli: list[str]):
    result = run_tool(*compose_cli, "-f", COMPOSE, "config", "-q", cwd=COMPOSE.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_compose_service_has_an_image_or_a_build_that_exists():
    for name, service in compose()["services"].items():
        assert "image" in service or "build" in service, name
        build = service.get("build")
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
            assert (context / "pyproject.toml").is_file(), f"{name}: context is not the repo"


def test_every_compose_dependency_is_a_defined_service_with_a_healthcheck_when_required():
    services = compose()["services"]
    for name, service in services.items():
        for dependency, spec in depends_on(service).items():
            assert dependency in services, f"{name} depends on undefined {dependency}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"


def test_every_compose_bind_mount_exists_and_every_named_volume_is_declared():
    config = compose()
    declared = set(config.get("volumes") or {})
    for name, service in config["services"].items():
        for source, _ in bind_mounts(service):
            assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source} is not declared"


def test_the_monitoring_services_mount_the_files_under_infra():
    services = compose()["services"]

    def mounted(service: str) -> set[Path]:
        return {(COMPOSE.parent / s).resolve() for s, _ in bind_mounts(services[service])}

    prometheus = mounted("prometheus")
    assert any(PROMETHEUS_CONFIG.resolve().is_relative_to(p) for p in prometheus)
    assert any(ALERTS.resolve().is_relative_to(p) for p in prometheus)
    assert ALERTMANAGER.resolve() in mounted("alertmanager")
    assert COLLECTOR.resolve() in mounted("otel-collector")
    assert DASHBOARD_DIR.resolve() in mounted("grafana")


def test_every_scrape_target_is_a_compose_service_that_serves_metrics_on_that_port():
    services = compose()["services"]
    for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.split(":")
                assert host in services, target
                environment = services[host]["environment"]
                ports = {str(v) for k, v in environment.items() if k.endswith("_PORT")}
                assert port in ports, f"{target}: {host} does not serve on port {port}"


def test_the_uait_services_are_configured_for_the_external_stack():
    services = compose()["services"]
    for name in ("setup", "ingress", "worker", "projections"):
        environment = services[name]["environment"]
        assert environment["UAIT_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        assert environment["UAIT_DATABASE_URL"].endswith("@postgres:5432/uait"), name
        assert environment["UAIT_REDIS_URL"] == "redis://redis:6379/0", name
        assert environment["UAIT_HTTP_HOST"] == "0.0.0.0", name
    assert services["worker"]["environment"]["UAIT_WORKER_METRICS_PORT"]
    assert "/livez" in " ".join(services["ingress"]["healthcheck"]["test"])
    for name in ("ingress", "worker", "projections"):
        assert depends_on(services[name])["setup"]["condition"] == (
            "service_completed_successfully"
        )
    kafka = services["kafka"]["environment"]
    assert int(kafka["KAFKA_MESSAGE_MAX_BYTES"]) >= int(
        services["ingress"]["environment"]["UAIT_KAFKA_MAX_MESSAGE_BYTES"]
    )


def test_no_password_is_written_in_the_compose_file_except_as_an_overridable_dev_default():
    text = COMPOSE.read_text(encoding="utf-8")
    for service in compose()["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key:
                assert re.fullmatch(r"\$\{[A-Z_]+:-[^}]*\}", str(value)), key
    for url in re.findall(r"postgresql://[^\s\"']+", text):
        password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
        assert password.startswith("${POSTGRES_PASSWORD:-"), url
