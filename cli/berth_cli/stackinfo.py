"""Finding the embedded stack a command talks to, and where its services listen.

`berth up` holds `<data dir>/up.lock` while it runs, writes `<data dir>/stack.json` (its
URLs, NATS address, credentials) once it is up, and registers the data directory under
`$XDG_STATE_HOME/berth/stacks/` (default `~/.local/state`) so that a command run from any
directory finds it. The rules, in order:

1. `--data-dir` / `BERTH_DATA_DIR`: that directory, running or not;
2. `./.berth`, if a stack runs from it;
3. the one running stack registered (several: say so and list them);
4. `./.berth` with its token file, though not running.

Nothing here creates tokens: a command that finds no stack says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from berth_shared.settings import DEFAULT_PORTS

DEFAULT_DATA_DIR = Path(".berth")
LOCK = "up.lock"
STACK_FILE = "stack.json"
TOKENS = "tokens.json"


class StackNotFound(Exception):
    pass


class AlreadyRunning(Exception):
    pass


@dataclass(frozen=True)
class Stack:
    data_dir: Path
    running: bool
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_path(self) -> Path:
        return self.data_dir / TOKENS

    def url(self, service: str) -> str | None:
        urls: dict[str, str] = self.info.get("urls", {})
        return urls.get(service)


def registry_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "berth" / "stacks"


def take_lock(data_dir: Path) -> IO[str]:
    """Hold `up.lock` for the stack's lifetime; a second `berth up` finds it taken."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / LOCK, "a+")  # noqa: SIM115 - held (locked) until the stack stops
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "?"
        handle.close()
        raise AlreadyRunning(
            f"berth is already running from {data_dir} (pid {pid}); stop it with Ctrl-C there"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def is_running(data_dir: Path) -> bool:
    """True while a `berth up` holds the directory's lock."""
    try:
        handle = open(data_dir / LOCK)  # noqa: SIM115 - closed below
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _entry(data_dir: Path) -> Path:
    return registry_dir() / (hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16] + ".json")


def publish(data_dir: Path, info: dict[str, Any]) -> None:
    """Called by `berth up` once every part is ready: stack.json plus the registry entry."""
    data_dir = data_dir.resolve()
    (data_dir / STACK_FILE).write_text(json.dumps(info, indent=2))
    with contextlib.suppress(OSError):  # a read-only home only loses discovery from elsewhere
        _entry(data_dir).parent.mkdir(parents=True, exist_ok=True)
        _entry(data_dir).write_text(json.dumps({"data_dir": str(data_dir)}))


def withdraw(data_dir: Path) -> None:
    with contextlib.suppress(OSError):
        (data_dir / STACK_FILE).unlink()
    with contextlib.suppress(OSError):
        _entry(data_dir).unlink()


def _load(data_dir: Path, running: bool) -> Stack:
    info: dict[str, Any] = {}
    if running:
        with contextlib.suppress(OSError, ValueError):
            info = json.loads((data_dir / STACK_FILE).read_text())
    return Stack(data_dir, running, info)


def running_stacks() -> list[Path]:
    """Data directories of the registered stacks that run now; stale entries are removed."""
    found = []
    for entry in sorted(registry_dir().glob("*.json")) if registry_dir().is_dir() else []:
        try:
            data_dir = Path(json.loads(entry.read_text())["data_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if is_running(data_dir):
            found.append(data_dir)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
    return found


def find_stack(explicit: Path | None = None) -> Stack:
    """The stack to talk to (see the module's rules), or StackNotFound saying why."""
    if explicit is None and os.environ.get("BERTH_DATA_DIR"):
        explicit = Path(os.environ["BERTH_DATA_DIR"])
    if explicit is not None:
        if not (explicit / TOKENS).exists():
            hint = f"`berth up --data-dir {explicit}` makes one"
            raise StackNotFound(f"no berth stack in {explicit} (no {TOKENS}; {hint})")
        return _load(explicit.resolve(), is_running(explicit))
    local = DEFAULT_DATA_DIR.resolve()
    if is_running(local):
        return _load(local, True)
    running = running_stacks()
    if len(running) == 1:
        return _load(running[0], True)
    if len(running) > 1:
        listed = "\n".join(f"  --data-dir {d}" for d in running)
        raise StackNotFound(f"{len(running)} berth stacks run; pick one with --data-dir or BERTH_DATA_DIR:\n{listed}")
    if (local / TOKENS).exists():
        return _load(local, False)
    raise StackNotFound(
        "no running berth stack found (none in ./.berth, none registered); start one with `berth up`, "
        "or pass --data-dir / set BERTH_DATA_DIR to its data directory"
    )


def service_url(service: str, explicit: str | None = None) -> str:
    """Where a service's HTTP API is: --url, BERTH_<SERVICE>_URL (BERTH_URL for the
    provisioner), the running stack's, else the default port on localhost."""
    if explicit:
        return explicit.rstrip("/")
    env = os.environ.get(f"BERTH_{service.upper()}_URL") or (
        os.environ.get("BERTH_URL") if service == "provisioner" else None
    )
    if env:
        return env.rstrip("/")
    with contextlib.suppress(StackNotFound):
        found = find_stack().url(service)
        if found:
            return found
    return f"http://127.0.0.1:{DEFAULT_PORTS[service]}"
