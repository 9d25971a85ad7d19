"""Checks of the deployment files in deploy/: they parse, reference real metrics, pass
promtool (skipped when promtool is not installed), and the configurations they ship pass
`smsagg check-config`; compose and Kubernetes run two instances on one PostgreSQL database."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator import metrics
from aggregator.config import ConfigError, load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)"
)

# Every smsagg_* identifier in a PromQL expression.
_METRIC_RE = re.compile(r"\bsmsagg_[a-zA-Z0-9_]+")
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def _yaml() -> Any:
    return pytest.importorskip("yaml", reason="PyYAML is needed to parse deploy/*.yml")


def _exposed_names() -> set[str]:
    """Names as Prometheus sees them: the family name and its sample names."""
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        names.update(f"{family.name}{suffix}" for suffix in _SUFFIXES)
        names.update(sample.name for sample in family.samples)
    return names


def _unknown_metrics(exprs: list[str]) -> set[str]:
    known = _exposed_names()
    used = {name for expr in exprs for name in _METRIC_RE.findall(expr)}
    return used - known


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (DEPLOY / "grafana" / "dashboards" / "smsagg.json").read_text(encoding="utf-8")
    )
    return data


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _alert_rules() -> list[dict[str, Any]]:
    data = _yaml().safe_load((DEPLOY / "alerts.yml").read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def _promtool(*args: str) -> None:
    assert PROMTOOL is not None
    proc = subprocess.run(
        [PROMTOOL, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"


# -- files parse --------------------------------------------------------------------------------


def test_yaml_files_exist() -> None:
    names = {str(p.relative_to(DEPLOY)) for p in YAML_FILES}
    for expected in (
        "docker-compose.yml",
        "prometheus.yml",
        "prometheus-compose.yml",
        "alerts.yml",
        "alerts_test.yml",
        "k8s/deployment.yaml",
        "k8s/secret.yaml",
        "grafana/provisioning/datasources/prometheus.yml",
    ):
        assert expected in names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = list(_yaml().safe_load_all(path.read_text(encoding="utf-8")))
    assert docs and all(doc is not None for doc in docs)


def test_smsagg_toml_loads() -> None:
    config = load_config(str(DEPLOY / "smsagg.toml"))
    assert str(config.http.listen) == "0.0.0.0:8080"
    assert config.store.path == "/var/lib/smsagg/smsagg.db"
    providers = {p.name: (p.host, p.port) for p in config.providers}
    assert providers == {"opA": ("smsc", 2776), "opB": ("smsc", 2777)}
    assert config.routes[0].prefixes == ("*",)
    assert set(config.routes[0].providers) == {"opA", "opB"}


CLUSTER_TOML = DEPLOY / "smsagg-cluster.toml"
DSN_ENV = "SMSAGG_DSN"
EXAMPLE_DSN = "postgresql://smsagg:pw@postgres:5432/smsagg"


def test_cluster_toml_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several instances: PostgreSQL with the DSN from the environment, no [instance] name in
    the shared file (each instance's is its host name), the single-instance file's accounts,
    providers and routes."""
    monkeypatch.setenv(DSN_ENV, EXAMPLE_DSN)
    config = load_config(str(CLUSTER_TOML))
    assert config.store.backend == "postgres"
    assert (config.store.dsn_env, config.store.dsn) == (DSN_ENV, EXAMPLE_DSN)
    assert "instance" not in tomllib.loads(CLUSTER_TOML.read_text(encoding="utf-8"))
    single = load_config(str(DEPLOY / "smsagg.toml"))
    assert [a.name for a in config.accounts] == [a.name for a in single.accounts]
    assert [(p.name, p.host, p.port) for p in config.providers] == [
        (p.name, p.host, p.port) for p in single.providers]
    assert config.routes == single.routes
    monkeypatch.delenv(DSN_ENV)
    with pytest.raises(ConfigError, match=DSN_ENV):
        load_config(str(CLUSTER_TOML))


@pytest.mark.parametrize("name", ["smsagg.toml", "smsagg-cluster.toml"])
def test_check_config_accepts_the_shipped_files(name: str) -> None:
    env = {**os.environ, DSN_ENV: EXAMPLE_DSN, "PYTHONPATH": str(DEPLOY.parent)}
    proc = subprocess.run([sys.executable, "-m", "aggregator", "check-config", str(DEPLOY / name)],
                          capture_output=True, text=True, timeout=60, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ": OK (" in proc.stdout


def test_k8s_configmap_matches_cluster_toml() -> None:
    data = _yaml().safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text(encoding="utf-8"))
    embedded = tomllib.loads(data["data"]["smsagg.toml"])
    assert embedded == tomllib.loads(CLUSTER_TOML.read_text(encoding="utf-8"))


def test_sim_profile_loads() -> None:
    from simulator.profiles import load_profiles

    specs = load_profiles(DEPLOY / "sim-profile.toml")
    assert [(s.name, s.port) for s in specs] == [("A", 2776), ("B", 2777)]


def test_k8s_deployment_two_replicas_dsn_from_secret() -> None:
    data = _yaml().safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text(encoding="utf-8"))
    spec = data["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    ref = env[DSN_ENV]["valueFrom"]["secretKeyRef"]
    secret = _yaml().safe_load((DEPLOY / "k8s" / "secret.yaml").read_text(encoding="utf-8"))
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == ref["name"]
    assert ref["key"] in secret["stringData"]
    assert secret["stringData"][ref["key"]].startswith("postgresql://")
    assert not (DEPLOY / "k8s" / "pvc.yaml").exists(), "the state is PostgreSQL's: no volume"
    assert all("persistentVolumeClaim" not in v for v in pod["volumes"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/var/lib/smsagg" in mounts


def test_compose_services() -> None:
    data = _yaml().safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    assert {"smsagg", "smsc", "loadgen", "prometheus", "grafana"} <= set(data["services"])
    loadgen = data["services"]["loadgen"]
    compile(loadgen["command"][0], "loadgen", "exec")  # the inline script is valid Python
    assert loadgen["environment"]["SMSAGG_API_KEY"] in {
        a.api_key for a in load_config(str(DEPLOY / "smsagg.toml")).accounts
    }
    assert loadgen["environment"]["SMSAGG_URL"] == "http://smsagg:8080"  # the one address


def test_compose_two_instances_on_postgres_behind_one_address() -> None:
    services = _yaml().safe_load(
        (DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))["services"]
    instances = {name: s for name, s in services.items()
                 if s.get("command", [None])[0] == "run"}
    assert set(instances) == {"smsagg-a", "smsagg-b"}
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in postgres["healthcheck"]["test"]
    for name, service in instances.items():
        config = dict(v.split(":")[:2] for v in service["volumes"])
        assert config["./smsagg-cluster.toml"] == "/etc/smsagg/smsagg.toml", name
        dsn = service["environment"][DSN_ENV]
        assert dsn.startswith("postgresql://") and "@postgres:5432/" in dsn, name
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "ports" not in service, f"{name}: only the proxy publishes a port"
    # Each instance's [instance] name is its host name: distinct.
    assert {s["hostname"] for s in instances.values()} == set(instances)
    proxy = services["smsagg"]
    assert proxy["ports"] == ["8080:8080"]
    assert set(proxy["depends_on"]) == set(instances)
    cfg = (DEPLOY / "haproxy.cfg").read_text(encoding="utf-8")
    servers = re.findall(r"^\s*server (\S+) (\S+)$", cfg, re.M)
    assert {address for _, address in servers} == {f"{n}:8080" for n in instances}
    assert "option httpchk GET /readyz" in cfg
    assert re.search(r"^\s*retry-on conn-failure$", cfg, re.M), "only unsent requests retried"
    scrape = _yaml().safe_load((DEPLOY / "prometheus-compose.yml").read_text(encoding="utf-8"))
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert set(targets) == {f"{n}:8080" for n in instances}, "scrape each instance"


# -- metric names -------------------------------------------------------------------------------


def test_metric_name_check_catches_typos() -> None:
    assert (
        _unknown_metrics(["rate(smsagg_submits_total[1m])", "smsagg_submit_latency_seconds_bucket"])
        == set()
    )
    assert _unknown_metrics(["smsagg_no_such_metric"]) == {"smsagg_no_such_metric"}


def test_dashboard_expressions_use_existing_metrics() -> None:
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    exprs = [t["expr"] for p in _panels(dashboard["panels"]) for t in p.get("targets", [])]
    assert len(exprs) >= 15
    assert _unknown_metrics(exprs) == set()
    used = {name for expr in exprs for name in _METRIC_RE.findall(expr)}
    for needed in (
        "smsagg_messages_accepted_total",
        "smsagg_submits_total",
        "smsagg_accept_latency_seconds_bucket",
        "smsagg_submit_latency_seconds_bucket",
        "smsagg_receipt_latency_seconds_bucket",
        "smsagg_accept_to_submit_seconds_bucket",
        "smsagg_window_in_use",
        "smsagg_bind_up",
        "smsagg_queue_depth",
        "smsagg_receipts_total",
        "smsagg_messages_rejected_total",
        "smsagg_store_errors_total",
        "smsagg_receipts_unmatched_total",
        "smsagg_breaker_state",
        "smsagg_failovers_total",
        "smsagg_retries_total",
    ):
        assert needed in used, needed


def test_dashboard_panels_have_unique_ids_and_datasource() -> None:
    panels = list(_panels(_dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        for target in panel.get("targets", []):
            assert target["datasource"]["type"] == "prometheus"


def test_alert_rules_use_existing_metrics() -> None:
    rules = _alert_rules()
    assert _unknown_metrics([r["expr"] for r in rules]) == set()
    names = {r["alert"] for r in rules}
    assert names >= {
        "SmsaggBindDown",
        "SmsaggNoBindsForProvider",
        "SmsaggQueueGrowing",
        "SmsaggDeliveryRatioDropping",
        "SmsaggSubmitLatencyHigh",
        "SmsaggReceiptsMissing",
        "SmsaggBreakerOpen",
        "SmsaggStoreErrors",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


# -- promtool -----------------------------------------------------------------------------------


@needs_promtool
def test_promtool_check_rules() -> None:
    _promtool("check", "rules", "alerts.yml")


@needs_promtool
@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-compose.yml"])
def test_promtool_check_config(config: str) -> None:
    _promtool("check", "config", config)


@needs_promtool
def test_promtool_test_rules() -> None:
    _promtool("test", "rules", "alerts_test.yml")


# -- Dockerfile and systemd unit ----------------------------------------------------------------


def test_dockerfile() -> None:
    lines = [
        line.strip() for line in (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines()
    ]
    assert lines[0].startswith("#") or lines[0].startswith("FROM")
    assert any(line.startswith("FROM python:3.11-slim") for line in lines)
    user = [line for line in lines if line.startswith("USER ")]
    assert user and not user[-1].split()[1].startswith(("root", "0"))
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    assert 'ENTRYPOINT ["smsagg"]' in lines
    assert 'CMD ["run", "--config", "/etc/smsagg/smsagg.toml"]' in lines
    assert "EXPOSE 8080" in lines
    assert "WORKDIR /var/lib/smsagg" in lines


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    text = (DEPLOY / "systemd" / "smsagg.service").read_text(encoding="utf-8")
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_hardening() -> None:
    s = _unit_settings()
    expected = {
        "User": "smsagg",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "TimeoutStopSec": "30",
        "StateDirectory": "smsagg",
        "WorkingDirectory": "/var/lib/smsagg",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "CapabilityBoundingSet": "",
        "ReadWritePaths": "/var/lib/smsagg",
    }
    for key, value in expected.items():
        assert s.get(key) == [value], key
    assert "@system-service" in s["SystemCallFilter"]
    assert s["ExecStart"] == ["/opt/smsagg/.venv/bin/smsagg run --config /etc/smsagg/smsagg.toml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # The unit names /opt/smsagg/.venv/bin/smsagg, absent here: verify a copy that points at the
    # smsagg of this environment instead.
    found = Path(sys.executable).parent / "smsagg"
    exe = str(found) if found.exists() else shutil.which("smsagg")
    if exe is None:
        pytest.skip("the smsagg script is not installed")
    text = (DEPLOY / "systemd" / "smsagg.service").read_text(encoding="utf-8")
    unit = tmp_path / "smsagg.service"
    unit.write_text(text.replace("/opt/smsagg/.venv/bin/smsagg", exe), encoding="utf-8")
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
