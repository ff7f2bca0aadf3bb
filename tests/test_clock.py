"""Clock offsets across processes: which latencies are exact, which are bounded, which are flagged."""

import math

import pytest

from loadgen.accounting import Accounting, percentiles_ms
from loadgen.clock import Estimate, ProcessClock
from loadgen.drivers.base import Delivery


def delivery(seq: int, sender: str, sent_at: float) -> Delivery:
    return Delivery("r1", seq, sender, seq, sent_at, sent_at)


def test_a_standalone_process_shares_every_sender_clock():
    """Standalone, every sender is this process: exact, never crossing."""
    clock = ProcessClock(None, limit=0.001)
    assert clock.sender_bound("u3") == (0.0, False)


def test_a_sender_on_the_same_worker_is_exact_whatever_the_offset():
    """Same worker: the offset cancels out, even before it is measured."""
    clock = ProcessClock("w1", limit=0.001)
    assert clock.sender_bound("w1-u3") == (0.0, False)


def test_across_workers_the_bound_is_both_uncertainties():
    """A message from another worker is off by at most the two uncertainties added."""
    clock = ProcessClock("w1", limit=0.010)
    clock.adopt(Estimate(-0.3, 0.002))
    clock.peers = {"w0": 0.003, "w1": 0.002}
    bound, crossed = clock.sender_bound("w0-u3")
    assert crossed and bound == pytest.approx(0.005)
    assert not clock.flags(bound)


def test_an_unmeasured_peer_or_self_makes_the_bound_infinite():
    """A worker the master has not reported yet, or our own unmeasured clock: flagged, not trusted."""
    clock = ProcessClock("w1", limit=0.010)
    clock.peers = {"w0": 0.001}
    assert clock.sender_bound("w0-u3") == (math.inf, True)
    clock.adopt(Estimate(0.0, 0.001))
    assert clock.sender_bound("w2-u3") == (math.inf, True)
    assert clock.sender_bound("w0-u3") == (pytest.approx(0.002), True)


def test_the_newest_measurement_is_adopted():
    """Re-measuring follows drift: the offset is the latest estimate's, and each is counted."""
    clock = ProcessClock("w0")
    clock.adopt(Estimate(0.010, 0.001))
    clock.adopt(Estimate(0.012, 0.004))
    assert (clock.offset, clock.uncertainty, clock.syncs) == (0.012, 0.004, 2)


def test_receiver_corrects_with_its_offset_and_keeps_uncertain_latencies_apart():
    """The receiver reads the backend's time through its offset; a latency whose clocks are not known
    within the limit goes to its own histogram, counted as uncertain, not into the delivery latency."""
    wall = 1000.0
    clock = ProcessClock("w1", limit=0.005)
    # this worker's wall clock runs 300 ms ahead of the backend's
    clock.adopt(Estimate(-0.300, 0.001))
    clock.peers = {"w0": 0.001, "w2": 0.020}
    accounting = Accounting(wallclock=lambda: wall, clock=clock)
    receiver = accounting.receiver()
    receiver.open_window("r1", 0)
    # stamped on the backend's clock by w0 100 ms before we received it
    receiver.deliver(delivery(1, "w0-u1", wall - 0.300 - 0.100))
    receiver.deliver(delivery(2, "w2-u1", wall - 0.300 - 0.050))
    receiver.deliver(delivery(3, "w1-u1", wall - 0.300 - 0.010))
    counts = accounting.counts
    assert (counts.delivered, counts.cross_process, counts.uncertain) == (3, 2, 1)
    assert accounting.latency.get_total_count() == 2
    assert percentiles_ms(accounting.latency)["max"] == pytest.approx(100.0, abs=0.1)
    assert percentiles_ms(accounting.uncertain_latency)["max"] == pytest.approx(50.0, abs=0.1)
