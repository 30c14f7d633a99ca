"""What the test OpenStack takes from this machine's shared servers: PostgreSQL databases
and a RabbitMQ vhost of its own, named `berthos_p<pid>_<hex>` so that those of a test
session that died (its pid is gone) are dropped by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import threading

from berth_testing.openstack_venv import OpenStackUnavailable, pins_key

_NAME = re.compile(r"^berthos_p(\d+)_[0-9a-f]{6}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale(name: str) -> bool:
    m = _NAME.match(name)
    return m is not None and not _pid_alive(int(m.group(1)))


class Postgres:
    """CREATE/DROP DATABASE through asyncpg, on a thread of its own (callers may be inside
    a running event loop)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def run(self, *statements: str, fetch: str | None = None) -> list[str]:
        out: list[str] = []

        async def go() -> None:
            import asyncpg

            c = await asyncpg.connect(self.url, timeout=10)
            try:
                if fetch:
                    out.extend(str(r[0]) for r in await c.fetch(fetch))
                for st in statements:
                    await c.execute(st)
            finally:
                await c.close()

        errors: list[BaseException] = []

        def thread() -> None:
            try:
                asyncio.run(go())
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=thread)
        t.start()
        t.join()
        if errors:
            raise OpenStackUnavailable(f"PostgreSQL at {self.url}: {errors[0]}") from errors[0]
        return out


def rabbitmqctl(*args: str, check: bool = False) -> str:
    if not shutil.which("rabbitmqctl"):
        raise OpenStackUnavailable("rabbitmqctl not found: cannot make a RabbitMQ vhost of our own")
    proc = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        raise OpenStackUnavailable(f"rabbitmqctl {args[0]}: {proc.stderr.strip()[-300:]}")
    return proc.stdout


TEMPLATE_PREFIX = "berthos_tpl_"


def template_name(service: str) -> str:
    """A service's freshly synced schema for the current pins, kept between sessions."""
    return f"{TEMPLATE_PREFIX}{pins_key()}_{service}"


def sweep_stale(pg: Postgres) -> None:
    """Databases and vhosts of test sessions that died, and templates of older pins."""
    names = pg.run(fetch="SELECT datname FROM pg_database WHERE datname LIKE 'berthos_%'")
    old = [n for n in names if n.startswith(TEMPLATE_PREFIX) and not n.startswith(template_name(""))]
    for db in [n for n in names if stale(n)] + old:
        with contextlib.suppress(OpenStackUnavailable):
            pg.run(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    with contextlib.suppress(OpenStackUnavailable):
        for vhost in (v.strip() for v in rabbitmqctl("list_vhosts").splitlines() if stale(v.strip())):
            rabbitmqctl("delete_vhost", vhost)


def make_vhost(vhost: str) -> None:
    rabbitmqctl("add_vhost", vhost, check=True)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*", check=True)
