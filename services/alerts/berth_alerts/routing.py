"""The routing tree: which receivers an alert goes to, in which group, with which timings.

Pure. Alertmanager's semantics: a route matches when all its matchers do; its children
are tried in order and the first that matches wins unless it has `continue: true`; a route
none of whose children matched handles the alert itself. Children inherit receiver,
group_by and timings from their parent. `group_by: ["..."]` groups by every label.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from berth_alerts.config import SEVERITY_BEHAVIOURS, AlertsConfig, RouteConfig, Timing
from berth_alerts.model import Matcher, matches_all

ALL_LABELS = "..."


@dataclass(frozen=True)
class Route:
    id: str  # the path in the tree, "0.2.1": stable while the file keeps its shape
    receiver: str
    matchers: tuple[Matcher, ...]
    group_by: tuple[str, ...]
    continue_: bool
    timing: Timing
    children: tuple[Route, ...]


@dataclass(frozen=True)
class Placement:
    """Where one alert goes on one route: the group it joins."""

    route: Route
    group_id: str
    group_labels: dict[str, str]


def build_tree(config: AlertsConfig) -> Route:
    root = config.route
    base = SEVERITY_BEHAVIOURS[root.behaviour or "warning"]
    return _build(root, "0", root.receiver or "", tuple(root.group_by or ()), base)


def _timing(node: RouteConfig, inherited: Timing) -> Timing:
    base = SEVERITY_BEHAVIOURS[node.behaviour] if node.behaviour else inherited
    return Timing(
        group_wait_s=base.group_wait_s if node.group_wait_s is None else node.group_wait_s,
        group_interval_s=base.group_interval_s if node.group_interval_s is None else node.group_interval_s,
        repeat_interval_s=base.repeat_interval_s if node.repeat_interval_s is None else node.repeat_interval_s,
    )


def _build(node: RouteConfig, rid: str, receiver: str, group_by: tuple[str, ...], inherited: Timing) -> Route:
    receiver = node.receiver or receiver
    group_by = tuple(node.group_by) if node.group_by is not None else group_by
    timing = _timing(node, inherited)
    children = tuple(_build(child, f"{rid}.{i}", receiver, group_by, timing) for i, child in enumerate(node.routes))
    return Route(rid, receiver, tuple(node.matchers), group_by, node.continue_, timing, children)


def match(route: Route, labels: dict[str, str]) -> list[Route]:
    """The routes that handle an alert with these labels (several when `continue` is set)."""
    if not matches_all(route.matchers, labels):
        return []
    found: list[Route] = []
    for child in route.children:
        hits = match(child, labels)
        if hits:
            found.extend(hits)
            if not child.continue_:
                break
    return found or [route]


def group_labels(route: Route, labels: dict[str, str]) -> dict[str, str]:
    if ALL_LABELS in route.group_by:
        return dict(labels)
    return {name: labels.get(name, "") for name in route.group_by}


_GROUP_IDS: dict[tuple[str, str, tuple[tuple[str, str], ...]], str] = {}
GROUP_ID_CACHE = 100_000  # entries; far more groups than any storm makes


def group_id(route: Route, glabels: dict[str, str]) -> str:
    # Remembered: a storm places thousands of alerts a second in a few hundred groups.
    key = (route.id, route.receiver, tuple(sorted(glabels.items())))
    found = _GROUP_IDS.get(key)
    if found is None:
        blob = json.dumps([route.id, route.receiver, key[2]], separators=(",", ":"))
        found = hashlib.sha256(blob.encode()).hexdigest()[:32]
        if len(_GROUP_IDS) >= GROUP_ID_CACHE:
            _GROUP_IDS.clear()
        _GROUP_IDS[key] = found
    return found


def place(tree: Route, labels: dict[str, str]) -> list[Placement]:
    out: list[Placement] = []
    for route in match(tree, labels):
        gl = group_labels(route, labels)
        out.append(Placement(route, group_id(route, gl), gl))
    return out


def routes_by_id(tree: Route) -> dict[str, Route]:
    out = {tree.id: tree}
    for child in tree.children:
        out.update(routes_by_id(child))
    return out
