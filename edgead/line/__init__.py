"""``edgead line``: camera frames in, verdicts out to the PLC (OPC UA), the message bus (MQTT) and a log.

``sources`` (hot folder, video; ``camera`` for GigE Vision through Aravis) feed a bounded ``queue``; ``run.Line``
scores one part at a time with a runner and hands each verdict to the sinks (``mqtt`` through the disk ``spool``,
``opcua``), the ``log`` (one row per frame) and the ``archive``; ``metrics`` counts it all.
"""

from edgead.line.frames import Frame, Verdict
from edgead.line.run import Line, LineConfig, LineSummary

__all__ = ["Frame", "Line", "LineConfig", "LineSummary", "Verdict"]
