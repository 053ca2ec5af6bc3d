"""The shared pod watch against a scripted API (no cluster): 410 -> re-list, cache rules."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from spawners.base import LABEL_INSTANCE, BackendError
from spawners.kubernetes import KubernetesBackend, KubernetesSettings, PodWatcher


def pod(uid: str, rv: int, pod_uid: str = "p-1", phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"name": f"atrium-{uid}", "uid": pod_uid, "resourceVersion": str(rv),
                         "labels": {LABEL_INSTANCE: uid}},
            "status": {"phase": phase}}


class Reply:
    def __init__(self, data: Any = None, events: list[dict[str, Any]] | None = None) -> None:
        self.data = json.dumps(data).encode() if data is not None else b""
        self._events = events or []

    def stream(self, amt: int, decode_content: bool = True) -> Iterator[bytes]:
        for event in self._events:
            yield json.dumps(event).encode() + b"\n"
        time.sleep(0.05)  # the server-side timeout of an idle watch

    def release_conn(self) -> None:
        pass


class ScriptedCore:
    """Lists return ``listings`` in turn; watches return ``watches`` in turn (then idle)."""

    def __init__(self, listings: list[list[dict[str, Any]]],
                 watches: list[list[dict[str, Any]]]) -> None:
        self.listings, self.watches = listings, watches
        self.watch_versions: list[str] = []

    def list_namespaced_pod(self, namespace: str, watch: bool = False, **kw: Any) -> Reply:
        if watch:
            self.watch_versions.append(kw["resource_version"])
            return Reply(events=self.watches.pop(0) if self.watches else [])
        items = self.listings.pop(0) if len(self.listings) > 1 else self.listings[0]
        version = max([int(p["metadata"]["resourceVersion"]) for p in items] + [1])
        return Reply({"metadata": {"resourceVersion": str(version)}, "items": items})


def wait(predicate: Any, within: float = 5) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_watch_applies_events_and_relists_on_410() -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                        "message": "too old resource version"}}
    core = ScriptedCore(
        listings=[[pod("a", 5)], [pod("a", 30, phase="Failed"), pod("c", 31)]],
        watches=[[{"type": "MODIFIED", "object": pod("a", 6, phase="Pending")},
                  {"type": "ADDED", "object": pod("b", 7, pod_uid="p-2")},
                  {"type": "DELETED", "object": pod("b", 8, pod_uid="p-2")},
                  {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}],
                 [gone]])
    watcher = PodWatcher(core, "ns", "atrium/deployment=d", 30, 300)
    watcher.start()
    try:
        # After the 410 the watcher lists again and resumes from the new list's version.
        wait(lambda: watcher.relists >= 2 and watcher.synced)
        synced, a = watcher.get("a")
        assert synced and a is not None and a["status"]["phase"] == "Failed"
        assert watcher.get("b")[1] is None
        assert watcher.get("c")[1] is not None
        assert core.watch_versions[:3] == ["5", "9", "31"]
    finally:
        watcher.stop()
    assert not watcher.synced


def test_cache_keeps_the_newest_pod_and_ignores_other_pods_deletion() -> None:
    watcher = PodWatcher(ScriptedCore([[]], []), "ns", "sel", 30, 300)
    watcher.put(pod("a", 10))
    watcher.put(pod("a", 9, phase="Pending"))  # older: ignored
    assert watcher.get("a")[1]["status"]["phase"] == "Running"  # type: ignore[index]
    # A DELETED event of an older pod of the same instance leaves the new one alone.
    watcher._apply("DELETED", pod("a", 11, pod_uid="old"))
    assert watcher.get("a")[1] is not None
    watcher._apply("DELETED", pod("a", 12))
    assert watcher.get("a")[1] is None


async def test_bad_configuration_is_a_backend_error() -> None:
    with pytest.raises(ValueError):
        KubernetesBackend("not a label value!")
    backend = KubernetesBackend("d", KubernetesSettings(kubeconfig="/nonexistent/kubeconfig"))
    with pytest.raises(BackendError, match="client configuration"):
        await backend.list_managed()
    await backend.close()
