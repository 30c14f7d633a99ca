"""The one HTTP helper of the CLI: a service's URL and token, one request, problems shown.

Every command takes `--url` (`BERTH_URL` for the provisioner, `BERTH_<SERVICE>_URL` for the
others), `--token` (`BERTH_TOKEN`) and `--json`. Without a URL the running embedded stack's
is used (`berth_cli.stackinfo`), else the default port on localhost; without a token, the
stack's token file: its `admin` token for admin commands, its `demo` token otherwise.
Exit codes: 0 done, 2 the request was refused (4xx, or no token), 1 the service could not be
reached or failed (5xx).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import httpx
import typer

from berth_cli.output import Column, emit, err_console, fail, note, record, table
from berth_cli.stackinfo import StackNotFound, find_stack, service_url
from berth_shared.auth import read_tokens

TIMEOUT = httpx.Timeout(60.0, connect=5.0)


def _url(service: str, env: str) -> Any:
    help_text = f"The {service}'s base URL [env {env}; default: the running stack's, else localhost]."
    return typer.Option("--url", envvar=env, show_default=False, help=help_text)


ProvisionerUrl = Annotated[str | None, _url("provisioner", "BERTH_URL")]
AttacherUrl = Annotated[str | None, _url("attacher", "BERTH_ATTACHER_URL")]
WatcherUrl = Annotated[str | None, _url("watcher", "BERTH_WATCHER_URL")]
AlertsUrl = Annotated[str | None, _url("alerts", "BERTH_ALERTS_URL")]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="BERTH_TOKEN",
        show_default=False,
        help="Bearer token (default: the running stack's, from its tokens.json).",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
Limit = Annotated[int, typer.Option("--limit", help="Page size (1-1000).")]
StartingToken = Annotated[str | None, typer.Option("--starting-token", help="Continue after this page token.")]
AllPages = Annotated[bool, typer.Option("--all-pages", help="Follow next_token until the last page.")]


def hint(service: str, status: int) -> str | None:
    if status == 401:
        return "pass --token or set BERTH_TOKEN (`berth tokens` prints the embedded stack's tokens)"
    if status == 403:
        return "this needs another token, e.g. the admin one (`berth tokens`)"
    if status >= 500:
        return f"the {service} failed; under `berth up` its log is <data dir>/logs/{service}.log"
    return None


def show_problem(service: str, resp: httpx.Response) -> NoReturn:
    """An error response (problem+json or not) on stderr; exit 2 for 4xx, 1 otherwise."""
    code = 2 if resp.status_code < 500 else 1
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = resp.text.strip()[:500] or resp.reason_phrase
        fail(f"{resp.request.method} {resp.request.url.path} answered {resp.status_code}: {text}", code)
    err = err_console()
    title, detail = body.get("title") or resp.reason_phrase, body.get("detail")
    reason = body.get("reason") or body.get("code")
    err.print(f"error: {title} ({resp.status_code}{f', {reason}' if reason else ''})", style="bold red", markup=False)
    if detail and detail != title:
        err.print(f"  {detail}", markup=False)
    for item in body.get("errors") or []:
        if isinstance(item, dict):
            err.print(f"  - {item.get('field') or 'body'}: {item.get('message')}", markup=False)
    skip = {"type", "title", "status", "detail", "code", "reason", "instance", "errors"}
    for key, value in ((k, v) for k, v in body.items() if k not in skip):
        if isinstance(value, list):
            err.print(f"  {key}:", markup=False)
            for item in value:
                err.print(f"    - {_flat(item)}", markup=False)
        else:
            err.print(f"  {key}: {_flat(value)}", markup=False)
    advice = hint(service, resp.status_code)
    if advice:
        err.print(f"  hint: {advice}", markup=False)
    raise typer.Exit(code)


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def seg(value: str) -> str:
    """A path segment: an id or tenant can never reach another endpoint."""
    return quote(value, safe="")


@dataclass(frozen=True)
class Api:
    service: str
    url: str
    token: str
    as_json: bool

    def call(
        self, method: str, path: str, *, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None
    ) -> Any:
        """One request; the decoded JSON body (None for 204). Errors end the command."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            with httpx.Client(
                base_url=self.url, timeout=TIMEOUT, headers={"Authorization": f"Bearer {self.token}"}
            ) as c:
                resp = c.request(method, path, json=body, params=query)
        except httpx.TimeoutException:
            fail(f"the {self.service} at {self.url} did not answer within {TIMEOUT.read:g} s", 1)
        except httpx.HTTPError as exc:
            fail(f"cannot reach the {self.service} at {self.url} ({type(exc).__name__}); is `berth up` running?", 1)
        if resp.is_error:
            show_problem(self.service, resp)
        return resp.json() if resp.content else None

    def show(self, body: Any, human: Callable[[Any], None] = record) -> None:
        emit(body, self.as_json, human)

    def pages(self, path: str, params: dict[str, Any], all_pages: bool) -> dict[str, Any]:
        """A list endpoint's first page, or every page merged (`next_token` then null)."""
        page: dict[str, Any] = self.call("GET", path, params=params)
        items = list(page["items"])
        while all_pages and page.get("next_token"):
            page = self.call("GET", path, params={**params, "starting_token": page["next_token"]})
            items.extend(page["items"])
        return {**page, "items": items}

    def show_list(self, page: dict[str, Any], cols: Sequence[Column]) -> None:
        self.show(page, lambda p: table(p["items"], cols))
        if not self.as_json and page.get("next_token"):
            note(f"more: --starting-token {page['next_token']} (or --all-pages)")

    def resolve(self, path: str, ref: str, *, kind: str, id_pattern: re.Pattern[str]) -> str:
        """A name or an id to the id: an id is taken as it is; a name is looked up in the
        list at `path` (the caller's own resources; names are unique per tenant)."""
        if id_pattern.fullmatch(ref):
            return ref
        matches = [item for item in self.pages(path, {"limit": 1000}, all_pages=True)["items"] if item["name"] == ref]
        if not matches:
            fail(f"no {kind} named or with id {ref!r}", 2)
        if len(matches) > 1:
            ids = ", ".join(f"{m['id']} ({m.get('tenant', '?')})" for m in matches)
            fail(f"{len(matches)} {kind}s are named {ref!r}: {ids}; give the id", 2)
        return str(matches[0]["id"])


def stack_token(name: str) -> str:
    """The running stack's token `name` (admin, demo), or exit 2 saying why there is none."""
    try:
        stack = find_stack()
    except StackNotFound as exc:
        fail(f"no token: pass --token or set BERTH_TOKEN ({exc})", 2)
    path: Path = stack.tokens_path
    try:
        found = read_tokens(path).get(name)
    except FileNotFoundError:
        found = None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        fail(f"cannot read the token file {path}: {exc}", 2)
    if not found:
        fail(f"no token: pass --token or set BERTH_TOKEN (no {name!r} token in {path})", 2)
    return str(found)


def api(service: str, url: str | None, token: str | None, as_json: bool, *, admin: bool = False) -> Api:
    """The client for one command: its service's URL, the token to use, the output mode."""
    return Api(service, service_url(service, url), token or stack_token("admin" if admin else "demo"), as_json)
