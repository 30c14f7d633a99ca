"""`berth tokens` and the default URLs find the running stack from any directory, or say none runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from berth_cli import stackinfo
from berth_cli.main import app
from berth_shared.auth import ensure_token_file


@contextmanager
def fake_running_stack(data_dir: Path, provisioner_port: int = 18701) -> Iterator[dict[str, str]]:
    """What `berth up` leaves while it runs: tokens, the held lock, stack.json, the registry entry."""
    tokens = ensure_token_file(data_dir / "tokens.json")
    lock = stackinfo.take_lock(data_dir)
    stackinfo.publish(data_dir, {"urls": {"provisioner": f"http://127.0.0.1:{provisioner_port}"}})
    try:
        yield tokens
    finally:
        stackinfo.withdraw(data_dir)
        lock.close()


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_tokens_with_no_stack_says_so_and_creates_nothing(elsewhere: Path) -> None:
    result = CliRunner().invoke(app, ["tokens"])
    assert result.exit_code == 1
    assert "no running berth stack found" in result.stderr and "berth up" in result.stderr
    assert list(elsewhere.iterdir()) == [], "no token file made up"

    result = CliRunner().invoke(app, ["tokens", "--data-dir", str(elsewhere / "nope")])
    assert result.exit_code == 1 and "no berth stack in" in result.stderr
    assert not (elsewhere / "nope").exists()


def test_tokens_find_the_running_stack_from_another_directory(tmp_path: Path, elsewhere: Path) -> None:
    with fake_running_stack(tmp_path / "stack-a") as tokens:
        result = CliRunner().invoke(app, ["tokens", "--json"])
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout) == tokens
        human = CliRunner().invoke(app, ["tokens"])
        assert tokens["demo"] in human.stdout and str(tmp_path / "stack-a") in human.stderr
        assert "running" in human.stderr
        assert stackinfo.service_url("provisioner") == "http://127.0.0.1:18701"

        with fake_running_stack(tmp_path / "stack-b", 28701):
            two = CliRunner().invoke(app, ["tokens"])
            assert two.exit_code == 1
            assert "2 berth stacks run" in two.stderr
            assert str(tmp_path / "stack-a") in two.stderr and str(tmp_path / "stack-b") in two.stderr
            explicit = CliRunner().invoke(app, ["tokens", "--json"], env={"BERTH_DATA_DIR": str(tmp_path / "stack-b")})
            assert explicit.exit_code == 0 and json.loads(explicit.stdout) != tokens

    # Stopped: the registry entry is gone, and nothing is found any more.
    assert CliRunner().invoke(app, ["tokens"]).exit_code == 1
    assert stackinfo.running_stacks() == []
    assert stackinfo.service_url("attacher") == "http://127.0.0.1:8702"


def test_a_stale_registry_entry_is_ignored_and_removed(tmp_path: Path, elsewhere: Path) -> None:
    dead = tmp_path / "dead"
    ensure_token_file(dead / "tokens.json")
    stackinfo.publish(dead, {"urls": {}})  # published, but no lock held: it crashed
    assert stackinfo.running_stacks() == []
    assert list(stackinfo.registry_dir().iterdir()) == []


def test_urls_explicit_then_environment_then_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_running_stack(tmp_path / "s", 18999):
        assert stackinfo.service_url("provisioner") == "http://127.0.0.1:18999"
        monkeypatch.setenv("BERTH_URL", "http://prov:1/")
        monkeypatch.setenv("BERTH_ATTACHER_URL", "http://att:2")
        assert stackinfo.service_url("provisioner") == "http://prov:1"
        assert stackinfo.service_url("attacher") == "http://att:2"
        assert stackinfo.service_url("provisioner", "http://x:3") == "http://x:3"


def test_nats_init_makes_the_material_and_keeps_its_keys(tmp_path: Path) -> None:
    first = CliRunner().invoke(app, ["nats", "init", str(tmp_path / "auth"), "--json"])
    assert first.exit_code == 0, first.stderr
    made = json.loads(first.stdout)
    assert Path(made["auth_conf"]).read_text().startswith("# Berth's NATS accounts")
    creds = {identity: Path(path).read_text() for identity, path in made["creds"].items()}
    assert set(creds) == {"provisioner", "attacher", "watcher", "alerts", "csi", "node", "admin"}
    again = CliRunner().invoke(app, ["nats", "init", str(tmp_path / "auth")])
    assert again.exit_code == 0 and "include" in again.stdout
    assert {i: Path(p).read_text() for i, p in made["creds"].items()} == creds, "issued credentials stay valid"
