"""The OPC UA sink: an asyncua server, in its own thread, that exposes the last verdict, the counters and health.

Address space (namespace ``urn:edgead:line``, string node ids ``edgead.line.<path>``, all read-only)::

    Objects/EdgeadLine/
      LastResult/   ResultId, IsPartial, ResultState, CreationTime, JobId, PartId, InternalRecipeId,
                    ProcessingTimes/{StartTime, EndTime, ProcessingDuration}, Outcome, Score, Threshold, DeadlineMissed
      Counters/     FramesIn, VerdictsOut, Scored, Anomalous, Dropped, Errors, DeadlineMissed (UInt64)
      Health/       State (String), Ok (Boolean), UpdatedAt

``LastResult`` borrows the names and meanings of OPC 40100-1 (Machine Vision) ``ResultType`` components where they
fit: ``ResultState`` uses that spec's values (1 Completed, 4 Failed; -1, an application-specific state the spec
allows, for a frame the queue dropped), the pass/fail answer is ``Outcome`` (OK, NOK, NONE without a threshold, ERROR),
which the spec leaves to ``ResultContent``. docs/line.md says where this differs from the companion specification.
The line hands each verdict over without waiting; the server thread writes the newest state (older states that
were not written yet are skipped: a PLC reads a value, not a stream; MQTT and the log carry every verdict).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from edgead.errors import InputError, require
from edgead.line.frames import DROPPED, ERROR, Verdict
from edgead.line.metrics import LineMetrics

NAMESPACE = "urn:edgead:line"
RESULT_STATE = {"scored": 1, ERROR: 4, DROPPED: -1}  # OPC 40100-1 ResultStateDataType; <0 is ours
COUNTER_NODES = {"FramesIn": "frames_in", "VerdictsOut": "verdicts_out", "Scored": "scored", "Anomalous": "anomalous",
                 "Dropped": "dropped", "Errors": "errors", "DeadlineMissed": "deadline_missed"}


def outcome(v: Verdict) -> str:
    if v.status != "scored":
        return "ERROR"
    return {"normal": "OK", "anomalous": "NOK"}.get(v.label or "", "NONE")


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)


class OpcUaSink:
    """Serves the line's state at ``endpoint`` (``opc.tcp://HOST:PORT[/PATH]``) until ``close``."""

    def __init__(self, endpoint: str, metrics: LineMetrics, threshold: float | None, sha: str,
                 start_timeout_s: float = 30.0) -> None:
        require("asyncua", "line", "the OPC UA sink")
        u = urlsplit(endpoint)
        if u.scheme != "opc.tcp" or not u.hostname or not u.port:
            raise InputError(f"expected an OPC UA endpoint as opc.tcp://HOST:PORT[/PATH], found '{endpoint}'")
        self.endpoint = endpoint
        self.metrics = metrics
        self.threshold = threshold
        self.sha = sha
        self.health = metrics.health
        self.writes = 0
        self._latest: tuple[Verdict | None, dict[str, int], str] | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="edgead-opcua", daemon=True)
        self._thread.start()
        if not self._ready.wait(start_timeout_s):
            raise InputError(f"expected the OPC UA server at {endpoint} to start within {start_timeout_s:g} s")
        if self._error is not None:
            raise InputError(f"expected to serve OPC UA at {endpoint}, found it impossible: "
                             f"{' '.join(str(self._error).split()) or type(self._error).__name__}") from None

    # -- the line's side -----------------------------------------------------------------------------------
    def publish(self, v: Verdict) -> None:
        self._latest = (v, self.metrics.snapshot(), self.health())
        self._poke()

    def refresh(self) -> None:
        """Write the counters and health now (no new verdict), e.g. after the last verdict of a run."""
        last = self._latest[0] if self._latest else None
        self._latest = (last, self.metrics.snapshot(), self.health())
        self._poke()

    def _poke(self) -> None:
        if self._loop is not None and self._wake is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the server's loop has ended (closed, or died): the line goes on without it
                pass

    def close(self, drain_s: float = 0.0) -> None:
        self.refresh()
        self._stopping = True
        self._poke()
        self._thread.join(10)

    # -- the server thread ---------------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the constructor, or lost at shutdown
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        from asyncua import Server, ua

        # asyncua warns on every start that NoSecurity has no signing policy: docs/line.md says so once
        logging.getLogger("asyncua").setLevel(logging.ERROR)
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("edgead line")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(NAMESPACE)
        nodes = await self._build(server, idx, ua)
        async with server:
            self._ready.set()
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._latest is not None:
                    await self._write(nodes, *self._latest, ua)
                if self._stopping:
                    break

    async def _build(self, server, idx: int, ua) -> dict[str, Any]:  # noqa: ANN001
        def nid(path: str):  # noqa: ANN202
            return ua.NodeId(f"edgead.line.{path}", idx)

        line = await server.nodes.objects.add_object(nid("EdgeadLine"), ua.QualifiedName("EdgeadLine", idx))
        now = datetime.now(timezone.utc)
        V = ua.VariantType
        spec = {
            "LastResult": [("ResultId", "", V.String), ("IsPartial", False, V.Boolean), ("ResultState", 0, V.Int32),
                           ("CreationTime", now, V.DateTime), ("JobId", "", V.String), ("PartId", "", V.String),
                           ("InternalRecipeId", self.sha, V.String), ("Outcome", "", V.String),
                           ("Score", float("nan"), V.Double),
                           ("Threshold", float("nan") if self.threshold is None else self.threshold, V.Double),
                           ("DeadlineMissed", False, V.Boolean)],
            "LastResult.ProcessingTimes": [("StartTime", now, V.DateTime), ("EndTime", now, V.DateTime),
                                           ("ProcessingDuration", 0.0, V.Double)],
            "Counters": [(name, 0, V.UInt64) for name in COUNTER_NODES],
            "Health": [("State", "starting", V.String), ("Ok", True, V.Boolean), ("UpdatedAt", now, V.DateTime)],
        }
        objects = {"": line}
        nodes: dict[str, Any] = {}
        for path, variables in spec.items():
            parent_path, _, name = path.rpartition(".")
            obj = await objects[parent_path].add_object(nid(path), ua.QualifiedName(name, idx))
            objects[path] = obj
            for var, value, vtype in variables:
                nodes[f"{path}.{var}"] = await obj.add_variable(nid(f"{path}.{var}"), ua.QualifiedName(var, idx),
                                                                ua.Variant(value, vtype))
        return nodes

    async def _write(self, nodes: dict[str, Any], v: Verdict | None, counts: dict[str, int], health: str,
                     ua) -> None:  # noqa: ANN001
        V = ua.VariantType
        values: dict[str, Any] = {}
        if v is not None:
            values.update({
                "LastResult.ResultId": (f"{v.run_id}/{v.seq}", V.String),
                "LastResult.ResultState": (RESULT_STATE.get(v.status, 0), V.Int32),
                "LastResult.CreationTime": (_dt(v.verdict_ns), V.DateTime),
                "LastResult.JobId": (v.run_id, V.String), "LastResult.PartId": (v.frame_id, V.String),
                "LastResult.InternalRecipeId": (v.artifact_sha256, V.String),
                "LastResult.Outcome": (outcome(v), V.String),
                "LastResult.Score": (float("nan") if v.score is None else v.score, V.Double),
                "LastResult.DeadlineMissed": (v.deadline_missed, V.Boolean),
                "LastResult.ProcessingTimes.StartTime": (_dt(v.trigger_ns), V.DateTime),
                "LastResult.ProcessingTimes.EndTime": (_dt(v.verdict_ns), V.DateTime),
                "LastResult.ProcessingTimes.ProcessingDuration": (v.latency_ms, V.Double),
            })
        values.update({f"Counters.{n}": (int(counts.get(k, 0)), V.UInt64) for n, k in COUNTER_NODES.items()})
        values.update({"Health.State": (health, V.String), "Health.Ok": (health == "ok", V.Boolean),
                       "Health.UpdatedAt": (datetime.now(timezone.utc), V.DateTime)})
        for key, (value, vtype) in values.items():
            await nodes[key].write_value(ua.Variant(value, vtype))
        self.writes += 1
