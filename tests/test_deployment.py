"""Static checks of the deployment files (docker/, .env.example); no Docker engine needed.

- docker/docker-compose.yml: the services, Kafka in KRaft mode, topic creation, the worker's
  environment and ports, the dry-run profile, mounts that exist.
- docker/Dockerfile: base image, non-root user, install, command, health check, build context.
- .env.example: every setting of simapp/config.py, with its default; nothing unknown.
- Prometheus: `promtool check config/rules` and the rules' unit tests (docker/prometheus/
  rules.test.yml runs the seed README's example PromQL against the recorded names); the
  workers' WEB_AUTH_TOKEN sent with every scrape from a mounted file; the image's health check
  sends it too.
- Grafana: every metric name in the dashboard's PromQL is one a worker exports.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import simapp.observe.metrics
from simapp.config import Settings
from tests.tools import require_tool

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"
ENTRYPOINT = DOCKER / "entrypoint.sh"
ENV_EXAMPLE = REPO / ".env.example"
PROM_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
PROM_RULES = DOCKER / "prometheus" / "rules.yml"
PROM_RULES_TEST = DOCKER / "prometheus" / "rules.test.yml"
PROM_TOKEN_FILE = DOCKER / "prometheus" / "web_auth_token"
GRAFANA_DATASOURCES = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_PROVIDERS = DOCKER / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "simapp.json"

SETTINGS_ENV = {name.upper() for name in Settings.model_fields}
COMPOSE_ONLY_SECTION = "compose-only"

TOPIC_SETTINGS = {
    "KAFKA_TOPIC": "simulation-events",
    "RESULTS_TOPIC": "simulation-results",
    "DLQ_TOPIC": "simulation-events-dlq",
    "PROGRESS_TOPIC": "simulation-progress",
}
# The seed README's counter names, recorded from our `_total` series by rules.yml.
SEED_COUNTERS = {
    "conversations_completed",
    "conversations_failed",
    "llm_api_calls",
    "llm_api_errors",
    "kafka_messages_consumed",
    "kafka_commits_succeeded",
    "kafka_commits_failed",
}
# The seed README's example queries, verbatim: they must run against our names + the rules.
SEED_QUERIES = [
    "rate(conversations_completed[5m])",
    "rate(conversations_completed[5m]) / (rate(conversations_completed[5m])"
    " + rate(conversations_failed[5m]))",
    "rate(conversation_duration_seconds_sum[5m]) / rate(conversation_duration_seconds_count[5m])",
    "histogram_quantile(0.95, rate(llm_api_latency_seconds_bucket[5m]))",
]
# What the dashboard has to show (the brief's panel list).
DASHBOARD_REQUIRED = {
    "conversations_completed_total",
    "conversations_failed_total",
    "conversation_duration_seconds_sum",
    "conversation_duration_seconds_count",
    "conversation_duration_seconds_bucket",
    "llm_api_latency_seconds_bucket",
    "llm_api_calls_total",
    "llm_rate_limit_rps",
    "llm_rate_limited_total",
    "circuit_breaker_state",
    "kafka_consumer_lag",
    "total_simulations",
    "remaining_simulations",
    "llm_tokens_total",
    "llm_cost_usd_total",
    "callback_deliveries_total",
    "callback_failures_total",
    "dead_letters_total",
}


# ------------------------------------------------------------------------------ helpers
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def resolve_defaults(value: str) -> str:
    """Compose interpolation with an empty environment: `${X:-d}` -> d, `${X}` -> "", `$$` -> $."""
    value = value.replace("$$", "\0")
    value = _INTERPOLATION.sub(lambda m: m.group(3) if m.group(2) in (":-", "-") else "", value)
    return value.replace("\0", "$")


def yaml_strings(node: Any) -> Iterator[str]:
    """Every key and scalar of a parsed YAML document, as strings (comments are gone)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from yaml_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from yaml_strings(item)
    elif node is not None:
        yield str(node)


def interpolated_names(document: Any) -> set[str]:
    """Variables compose interpolates in a parsed file (`${NAME...}`; `$${...}` is literal)."""
    return {
        m.group(1)
        for text in yaml_strings(document)
        for m in _INTERPOLATION.finditer(text.replace("$$", ""))
    }


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def published_ports(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host port or range, container port) of each published port, defaults resolved."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append((str(port.get("published", "")), str(port["target"])))
            continue
        parts = resolve_defaults(str(port)).split("/")[0].split(":")
        out.append((parts[-2] if len(parts) > 1 else "", parts[-1]))
    return out


def command_args(value: Any) -> list[str]:
    if isinstance(value, str):
        return resolve_defaults(value).split()
    return [resolve_defaults(str(item)) for item in value]


_ENV_LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")
_SECTION = re.compile(r"^#\s*---\s*(.+?)\s*---\s*$")


def parse_env_example(path: Path = ENV_EXAMPLE) -> list[dict[str, Any]]:
    """Entries of .env.example: key, value, active (`KEY=v`) or documented (`# KEY=v`), section."""
    entries = []
    section = ""
    for line in path.read_text().splitlines():
        header = _SECTION.match(line)
        if header:
            section = header.group(1)
            continue
        match = _ENV_LINE.match(line)
        if match:
            entries.append(
                {
                    "key": match.group(2),
                    "value": match.group(3),
                    "active": match.group(1) is None,
                    "section": section,
                    "compose_only": section.lower().startswith(COMPOSE_ONLY_SECTION),
                }
            )
    return entries


_SAMPLE_NAME = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)")
_TYPE_LINE = re.compile(r"^#\s+TYPE\s+([a-zA-Z_:][a-zA-Z0-9_:]*)\s+(\w+)")
_TYPE_SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count"),
}


def exported_metric_names(text: str, *, declared: bool = False) -> set[str]:
    """Names of the samples in a Prometheus text exposition.

    With declared=True, also the series names implied by `# TYPE` lines, i.e. metrics the
    process exports but whose labelled children have not been created yet (a small run never
    sees a 429 or a dead letter, for instance).
    """
    names: set[str] = set()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            typed = _TYPE_LINE.match(line)
            if declared and typed:
                name, kind = typed.groups()
                names.update(name + suffix for suffix in _TYPE_SUFFIXES.get(kind, ("",)))
            continue
        sample = _SAMPLE_NAME.match(line)
        if sample:
            names.add(sample.group(1))
    return names


def exposition_with_every_metric() -> str:
    """The metrics exposition after touching each labelled metric once (then removed)."""
    touched = []
    for metric in vars(simapp.observe.metrics).values():
        labelnames = getattr(metric, "_labelnames", None)
        if labelnames and hasattr(metric, "labels"):
            values = ["__deployment_test__"] * len(labelnames)
            metric.labels(*values)
            touched.append((metric, values))
    try:
        return simapp.observe.metrics.exposition().decode()
    finally:
        for metric, values in touched:
            metric.remove(*values)


PROMQL_NON_METRICS = {
    # operators and modifiers
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "atan2", "inf", "nan", "start", "end",
    # label names that can appear outside braces
    "le", "quantile",
    # aggregations and functions (normally followed by "(", listed for safety)
    "sum", "avg", "min", "max", "count", "count_values", "stddev", "stdvar", "topk", "bottomk",
    "quantile_over_time", "rate", "irate", "increase", "delta", "idelta", "deriv",
    "histogram_quantile", "clamp_min", "clamp_max", "clamp", "scalar", "vector", "abs",
    "absent", "ceil", "floor", "round", "time", "timestamp", "label_replace", "label_join",
    "sort", "sort_desc", "avg_over_time", "max_over_time", "min_over_time", "sum_over_time",
    "count_over_time", "last_over_time", "predict_linear", "changes", "resets",
}  # fmt: skip
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]|\s*\()")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (`name{...}`, `name[...]` or a bare `name`).

    Grafana variables, strings, label matchers, ranges and by/on/... clauses are removed
    first; what is left that is not a function call, keyword or number is a metric name.
    """
    expr = _GRAFANA_VARIABLE.sub("1m", expr)
    expr = _STRING.sub('""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = _GROUPING.sub(" ", expr)
    return {
        name
        for name in _IDENTIFIER.findall(expr)
        if name.lower() not in PROMQL_NON_METRICS and not re.fullmatch(r"[eE]\d*", name)
    }


def dashboard_panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in node.get("panels", []):
        yield panel
        yield from dashboard_panels(panel)  # rows nest their panels


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel.get("title", "?"), target["expr"])
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    shown = " ".join(map(str, args))
    assert result.returncode == 0, f"promtool {shown}:\n{result.stdout}{result.stderr}"
    return result


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def env_example() -> list[dict[str, Any]]:
    return parse_env_example()


@pytest.fixture(scope="module")
def exported_names() -> set[str]:
    return exported_metric_names(exposition_with_every_metric())


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(PROM_RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


# ------------------------------------------------------------------------------ compose
def test_compose_has_the_services(services: dict[str, Any]) -> None:
    assert {"kafka", "topics", "worker", "mock-llm", "prometheus", "grafana"} <= set(services)
    assert services["mock-llm"].get("profiles") == ["dry-run"]
    for name in ("kafka", "topics", "worker", "prometheus", "grafana"):
        assert not services[name].get("profiles"), f"{name} must start without a profile"


def test_kafka_is_kraft_without_zookeeper(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] and env["CLUSTER_ID"]
    for name, service in services.items():
        assert "zookeeper" not in name.lower()
        assert "zookeeper" not in str(service.get("image", "")).lower()
        assert not any("ZOOKEEPER" in key for key in environment(service)), name


def test_kafka_listeners(services: dict[str, Any]) -> None:
    env = environment(services["kafka"])
    advertised = resolve_defaults(env["KAFKA_ADVERTISED_LISTENERS"]).split(",")
    assert any(item.endswith("://kafka:9092") for item in advertised), advertised
    assert any(item.endswith("://localhost:9094") for item in advertised), advertised
    listener_names = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
    protocol_map = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert listener_names <= set(protocol_map)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listener_names
    assert ("9094", "9094") in published_ports(services["kafka"])


def test_topics_service_creates_every_topic(services: dict[str, Any]) -> None:
    topics = services["topics"]
    assert topics["image"] == services["kafka"]["image"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    script = " ".join(map(str, topics.get("entrypoint", []))) + " " + str(topics.get("command", ""))
    assert "kafka-topics.sh" in script and "--create" in script and "--if-not-exists" in script
    assert "--partitions ${KAFKA_PARTITIONS:-8}" in script
    assert "--bootstrap-server kafka:9092" in script
    for setting, default in TOPIC_SETTINGS.items():
        assert f"${{{setting}:-{default}}}" in script, setting
        assert Settings.model_fields[setting.lower()].default == default
    assert topics["entrypoint"][:2] == ["/bin/bash", "-c"]
    script = resolve_defaults(topics["entrypoint"][2])
    syntax = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert syntax.returncode == 0, f"topics script: {syntax.stderr}"


def test_worker_service(services: dict[str, Any]) -> None:
    worker = services["worker"]
    build = worker["build"]
    context = (DOCKER / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    assert worker["deploy"]["replicas"] == 5
    assert worker["env_file"] in ("../.env", ["../.env"])
    env = environment(worker)
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["BROKER_PROFILE"] == "kafka"
    assert env["METRICS_PORT"] == "8000"
    assert env["WEB_BIND"] == "0.0.0.0"
    assert ("8001-8005", "8000") in published_ports(worker)
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "container_name" not in worker, "a fixed container name prevents scaling"


def test_worker_environment_is_settings(services: dict[str, Any]) -> None:
    unknown = set(environment(services["worker"])) - SETTINGS_ENV
    assert not unknown, f"worker environment sets variables simapp does not read: {unknown}"


def test_dry_run_services_run_the_embedded_servers(services: dict[str, Any]) -> None:
    from simapp.embedded import mock_llm, sink

    args = command_args(services["mock-llm"]["command"])
    assert args[:3] == ["python", "-m", "simapp.embedded.mock_llm"]
    config = mock_llm.parse_args(args[3:])
    assert (config.host, config.port) == ("0.0.0.0", 8080)
    assert "--rps-limit" in args and config.rps_limit > 0
    # The image's HEALTHCHECK probes the worker's METRICS_PORT: other roles must override it.
    for name in ("mock-llm", "sink"):
        if name in services:
            assert services[name].get("healthcheck", {}).get("test"), name
    if "sink" in services:
        args = command_args(services["sink"]["command"])
        assert args[:3] == ["python", "-m", "simapp.embedded.sink"]
        assert sink.parse_args(args[3:]).host == "0.0.0.0"
        assert services["sink"].get("profiles") == ["dry-run"]


def test_compose_variables_are_settings_or_documented(
    compose: dict[str, Any], env_example: list[dict[str, Any]]
) -> None:
    compose_only = {e["key"] for e in env_example if e["compose_only"]}
    unknown = interpolated_names(compose) - SETTINGS_ENV - compose_only
    assert not unknown, f"compose variables not in .env.example's compose-only section: {unknown}"


def test_compose_mounts_exist(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume["source"] if isinstance(volume, dict) else str(volume).split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: bind-mount source {source} missing"


def test_prometheus_and_grafana_services(services: dict[str, Any]) -> None:
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["image"].startswith("prom/prometheus:")
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in prometheus["volumes"]}
    assert (DOCKER / mounts["/etc/prometheus/prometheus.yml"]).resolve() == PROM_CONFIG
    assert (DOCKER / mounts["/etc/prometheus/rules.yml"]).resolve() == PROM_RULES
    assert grafana["image"].startswith("grafana/grafana:")
    assert ("3000", "3000") in published_ports(grafana)
    env = {k: resolve_defaults(v) for k, v in environment(grafana).items()}
    assert (env["GF_SECURITY_ADMIN_USER"], env["GF_SECURITY_ADMIN_PASSWORD"]) == ("admin", "admin")


# ------------------------------------------------------------------------------ Dockerfile
def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    instructions = _dockerfile_instructions()
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    assert froms and all(rest.split()[0] == "python:3.11-slim" for rest in froms)
    final = instructions[max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM") :]
    users = [rest for kw, rest in final if kw == "USER"]
    assert users and users[-1] not in ("root", "0"), "the runtime stage must not run as root"
    assert [rest for kw, rest in final if kw == "WORKDIR"][-1] == "/app"
    assert any(kw == "RUN" and "pip install ." in rest for kw, rest in instructions)
    cmd = [rest for kw, rest in final if kw == "CMD"][-1]
    assert json.loads(cmd) == ["faust", "-A", "simapp", "worker", "-l", "info"]
    healthcheck = [rest for kw, rest in final if kw == "HEALTHCHECK"][-1]
    assert "python -c" in healthcheck and "http://127.0.0.1:${METRICS_PORT" in healthcheck
    assert "/metrics" in healthcheck


def test_healthcheck_sends_the_web_token() -> None:
    """The image's health check, run by sh as Docker runs it, against a stand-in worker that
    asks for a token: healthy with the right WEB_AUTH_TOKEN or with none asked for."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    token = "t" * 40
    asked: dict[str, str | None] = {"token": token}

    class Worker(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            wanted = asked["token"]
            ok = self.path == "/metrics" and (
                wanted is None or self.headers.get("Authorization") == f"Bearer {wanted}"
            )
            self.send_response(200 if ok else 401)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    healthcheck = [rest for kw, rest in _dockerfile_instructions() if kw == "HEALTHCHECK"][-1]
    command = healthcheck.split(" CMD ", 1)[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Worker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

    def healthy(**env: str) -> bool:
        env = {"PATH": path, "METRICS_PORT": str(server.server_address[1]), **env}
        done = subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=30)
        return done.returncode == 0

    try:
        assert healthy(WEB_AUTH_TOKEN=token)
        assert not healthy(WEB_AUTH_TOKEN="w" * 40)
        assert not healthy()
        asked["token"] = None  # a worker without a token
        assert healthy()
        assert healthy(WEB_AUTH_TOKEN="")
    finally:
        server.shutdown()
        server.server_close()


def test_docker_build_context_has_what_the_image_needs() -> None:
    """Every COPY source exists, and the .dockerignore allow-list lets it (not .env) through."""
    ignore = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    patterns = [line for line in ignore if line and not line.startswith("#")]
    assert patterns[0] == "*", "Dockerfile.dockerignore should be an allow-list"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert not {".env", ".venv", ".git"} & allowed
    sources = []
    for kw, rest in _dockerfile_instructions():
        if kw == "COPY" and "--from=" not in rest:
            args = [a for a in rest.split() if not a.startswith("--")]
            sources += args[:-1]
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert source in allowed, f"COPY {source}: excluded by {DOCKERIGNORE.name}"
    # Every package pyproject installs is copied.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    mapped = pyproject["tool"]["setuptools"].get("package-dir", {})
    for package in setuptools["packages"]:
        # a package's folder: its package-dir mapping, else the top-level name's folder
        folder = mapped.get(package, package.split(".")[0])
        assert folder.split("/")[0] in sources, f"package {package} ({folder}/) is not copied"
    assert "pyproject.toml" in sources and "README.md" in sources


def test_entrypoint_script() -> None:
    assert os.access(ENTRYPOINT, os.X_OK), "docker/entrypoint.sh must be executable"
    result = subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 'exec "$@"' in ENTRYPOINT.read_text()


# ------------------------------------------------------------------------------ .env.example
def test_env_example_keys_are_settings(env_example: list[dict[str, Any]]) -> None:
    keys = [e["key"] for e in env_example if not e["compose_only"]]
    unknown = set(keys) - SETTINGS_ENV
    assert not unknown, f".env.example sets variables simapp does not read: {unknown}"
    duplicates = {k for k in keys if keys.count(k) > 1}
    assert not duplicates


def test_env_example_documents_every_setting(env_example: list[dict[str, Any]]) -> None:
    missing = SETTINGS_ENV - {e["key"] for e in env_example}
    assert not missing, f"settings missing from .env.example: {sorted(missing)}"


def test_env_example_values_are_the_defaults(env_example: list[dict[str, Any]]) -> None:
    """Every value parses with Settings and is the field's default (so the file cannot lie)."""
    given = {
        e["key"].lower(): e["value"]
        for e in env_example
        if not e["compose_only"] and e["key"] != "LLM_API_KEY" and (e["active"] or e["value"])
    }
    parsed = Settings(_env_file=None, **given)
    for field in given:
        default = Settings.model_fields[field].get_default(call_default_factory=True)
        assert getattr(parsed, field) == default, f"{field.upper()}: .env.example != default"


def test_env_example_has_no_api_key(env_example: list[dict[str, Any]]) -> None:
    (entry,) = [e for e in env_example if e["key"] == "LLM_API_KEY"]
    assert entry["active"] and entry["value"] == ""
    assert "never commit" in ENV_EXAMPLE.read_text().lower()


def test_env_example_compose_only_keys_are_used(
    compose: dict[str, Any], env_example: list[dict[str, Any]]
) -> None:
    used = interpolated_names(compose)
    for entry in env_example:
        if entry["compose_only"]:
            assert entry["key"] not in SETTINGS_ENV, f"{entry['key']} is a setting"
            assert entry["key"] in used or entry["key"].startswith("COMPOSE_"), entry["key"]


# ------------------------------------------------------------------------------ Prometheus
def test_promtool_check_config() -> None:
    run_promtool("check", "config", PROM_CONFIG)


def test_promtool_check_rules() -> None:
    run_promtool("check", "rules", PROM_RULES)


def test_promtool_rule_unit_tests() -> None:
    """rules.test.yml: the seed README's example PromQL, verbatim, over recorded series."""
    run_promtool("test", "rules", PROM_RULES_TEST)
    tested = PROM_RULES_TEST.read_text()
    for query in SEED_QUERIES:
        assert f"expr: {query}\n" in tested, f"seed query not unit-tested: {query}"


def test_prometheus_scrapes_every_worker_replica(services: dict[str, Any]) -> None:
    config = yaml.safe_load(PROM_CONFIG.read_text())
    assert [(PROM_CONFIG.parent / f).resolve() for f in config["rule_files"]] == [PROM_RULES]
    worker_port = environment(services["worker"])["METRICS_PORT"]
    sd = [
        sd
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        if "worker" in sd.get("names", [])
    ]
    assert sd == [{**sd[0], "names": ["worker"], "type": "A", "port": int(worker_port)}]


def test_prometheus_sends_the_workers_token(services: dict[str, Any]) -> None:
    """Worker scrapes carry WEB_AUTH_TOKEN from a credentials file: the compose file mounts
    WEB_AUTH_TOKEN_FILE where prometheus.yml names it, by default the empty file in the
    repository (which must stay empty: a token is never committed)."""
    config = yaml.safe_load(PROM_CONFIG.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "simapp-worker"]
    auth = job["authorization"]
    assert auth.get("type", "Bearer") == "Bearer" and "credentials" not in auth
    assert (PROM_CONFIG.parent / auth["credentials_file"]).resolve() == PROM_TOKEN_FILE
    assert PROM_TOKEN_FILE.read_bytes() == b"", "no token in the repository: WEB_AUTH_TOKEN_FILE"
    volumes = services["prometheus"]["volumes"]
    (config_target,) = [
        str(v).split(":")[1]
        for v in volumes
        if isinstance(v, str) and (DOCKER / v.split(":")[0]).resolve() == PROM_CONFIG
    ]
    target = str(Path(config_target).parent / auth["credentials_file"])
    (mount,) = [v for v in volumes if isinstance(v, dict) and v.get("target") == target]
    assert mount["type"] == "bind" and mount["read_only"] is True
    assert not mount.get("bind", {}).get("create_host_path", False)  # missing file: an error
    assert mount["source"].startswith("${WEB_AUTH_TOKEN_FILE:-")
    assert (DOCKER / resolve_defaults(mount["source"])).resolve() == PROM_TOKEN_FILE


def test_recording_rules(rules: list[dict[str, Any]], exported_names: set[str]) -> None:
    records = {rule["record"]: rule["expr"] for rule in rules if "record" in rule}
    assert set(records) == SEED_COUNTERS
    for record, expr in records.items():
        sources = promql_metric_names(expr)
        assert sources == {f"{record}_total"}, f"{record}: records {sources}"
        assert sources <= exported_names, f"{record}: {sources - exported_names} not exported"


def test_seed_queries_resolve(rules: list[dict[str, Any]], exported_names: set[str]) -> None:
    available = exported_names | {rule["record"] for rule in rules if "record" in rule}
    for query in SEED_QUERIES:
        assert promql_metric_names(query) <= available, query


# ------------------------------------------------------------------------------ Grafana
def test_grafana_provisioning(services: dict[str, Any], dashboard: dict[str, Any]) -> None:
    datasources = yaml.safe_load(GRAFANA_DATASOURCES.read_text())["datasources"]
    (prometheus,) = [d for d in datasources if d["type"] == "prometheus"]
    assert prometheus["url"] == "http://prometheus:9090"
    uids = {
        str(p["datasource"]["uid"])
        for p in dashboard_panels(dashboard)
        if isinstance(p.get("datasource"), dict)
    }
    assert uids == {prometheus["uid"]}
    providers = yaml.safe_load(GRAFANA_PROVIDERS.read_text())["providers"]
    mounts = {
        str(v).split(":")[1]: (DOCKER / str(v).split(":")[0]).resolve()
        for v in services["grafana"]["volumes"]
        if str(v).startswith(".")
    }
    assert mounts[providers[0]["options"]["path"]] == DASHBOARD.parent
    assert mounts["/etc/grafana/provisioning/datasources"] == GRAFANA_DATASOURCES.parent
    assert mounts["/etc/grafana/provisioning/dashboards"] == GRAFANA_PROVIDERS.parent


def test_promql_metric_names_extraction() -> None:
    assert promql_metric_names(
        'histogram_quantile(0.95, sum by (le, model) (rate(x_bucket{model=~"a|b"}[5m])))'
    ) == {"x_bucket"}
    assert promql_metric_names("a / on() group_left() scalar(b + c offset 5m) > 1e-9") == {
        "a",
        "b",
        "c",
    }
    assert promql_metric_names("sum(increase(d_total[$__range])) * 3600") == {"d_total"}


def test_exported_metric_names_parser() -> None:
    text = (
        '# HELP a_total help\n# TYPE a_total counter\na_total{x="1"} 1.0\n'
        "# TYPE h histogram\n# TYPE g gauge\ng 2\n"
    )
    assert exported_metric_names(text) == {"a_total", "g"}
    assert exported_metric_names(text, declared=True) == {
        "a_total", "g", "h_bucket", "h_sum", "h_count",
    }  # fmt: skip


def test_dashboard_shows_what_was_asked(dashboard: dict[str, Any]) -> None:
    used = set().union(*(promql_metric_names(expr) for _, expr in dashboard_exprs(dashboard)))
    missing = DASHBOARD_REQUIRED - used
    assert not missing, f"dashboard has no panel for {sorted(missing)}"
    ids = [p["id"] for p in dashboard_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_metrics_are_exported(
    dashboard: dict[str, Any], exported_names: set[str]
) -> None:
    problems = [
        f"{title}: {sorted(promql_metric_names(expr) - exported_names)} in {expr}"
        for title, expr in dashboard_exprs(dashboard)
        if promql_metric_names(expr) - exported_names
    ]
    assert not problems, "dashboard uses metrics simapp does not export:\n" + "\n".join(problems)


def test_dashboard_promql_parses(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Each dashboard expression, as a recording rule, passes promtool's PromQL parser."""
    exprs = [_GRAFANA_VARIABLE.sub("1h", expr) for _, expr in dashboard_exprs(dashboard)]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": expr} for i, expr in enumerate(exprs)
    ]}]}  # fmt: skip
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    run_promtool("check", "rules", path)


@pytest.mark.slow
def test_dashboard_metrics_exported_by_live_worker(
    request: pytest.FixtureRequest, dashboard: dict[str, Any], rules: list[dict[str, Any]]
) -> None:
    """The same check against a real worker's /metrics after a small run."""
    try:
        text = request.getfixturevalue("live_worker_metrics_text")
    except pytest.FixtureLookupError:
        pytest.skip("live worker fixture not available (live_worker_metrics_text in conftest)")
    samples = exported_metric_names(text)
    assert "conversations_completed_total" in samples, "the run completed no conversation"
    # Labelled children a small run never creates (429s, dead letters) are only declared.
    exported = exported_metric_names(text, declared=True)
    used = set().union(*(promql_metric_names(expr) for _, expr in dashboard_exprs(dashboard)))
    sources = set().union(*(promql_metric_names(r["expr"]) for r in rules if "record" in r))
    missing = (used | sources) - exported
    assert not missing, f"not exported by a live worker: {sorted(missing)}"
