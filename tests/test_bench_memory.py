"""``edgead.bench.memory``: phases are counted, timed and charged the RSS seen while they ran."""

import types

import numpy as np

from edgead.bench.memory import Recorder


def test_a_phase_is_charged_the_memory_it_held():
    rec = Recorder(interval=0.001)
    rec.start()
    owner = types.SimpleNamespace(work=lambda mb: int(np.ones(mb * 1024 * 1024 // 8).sum()))
    rec.wrap(owner, "work", "allocate")
    before = rec.rss()
    assert owner.work(200) == 200 * 1024 * 128 and owner.work(1) == 128 * 1024
    rec.stop()
    p = rec.report(1.0)["phases"]["allocate"]
    assert p["calls"] == 2
    assert p["peak_mb"] >= before + 150  # the 200 MB array was resident while the phase ran
    assert rec.report(1.0)["peak_rss_mb"] >= p["peak_mb"] - 1
