"""Delivery accounting from hand-built event sequences: no sockets, no clocks but fake ones."""

import pytest

from loadgen.accounting import Accounting, ImplausibleSequence, percentiles_ms
from loadgen.drivers.base import INBOX, Delivery, sender_stream


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def accounting(clock):
    return Accounting(delivery_timeout=5.0, monotonic=clock, wallclock=clock)


def msg(seq, stream="r1", sent_at=999.0):
    return Delivery(stream, seq, "u9", seq, sent_at, sent_at)


def test_in_order_deliveries_count_once_each(accounting):
    """Deliveries in sequence after the join head are delivered, nothing else."""
    r = accounting.receiver()
    r.open_window("r1", 10)
    assert [r.deliver(msg(s)) for s in (11, 12, 13)] == ["delivered"] * 3
    c = accounting.counts
    assert (c.delivered, c.lost, c.duplicated, c.out_of_order) == (3, 0, 0, 0)


def test_hole_becomes_lost_only_after_the_timeout(accounting, clock):
    """A gap is lost once it stays open for the delivery timeout, not before."""
    r = accounting.receiver()
    r.open_window("r1", 0)
    r.deliver(msg(1))
    r.deliver(msg(3))
    clock.now += 4.9
    assert accounting.expire() == 0
    clock.now += 0.2
    assert accounting.expire() == 1
    assert accounting.counts.lost == 1


def test_late_fill_is_out_of_order_not_lost(accounting, clock):
    """A message overtaken by a later one fills its hole and counts as out of order."""
    r = accounting.receiver()
    r.open_window("r1", 0)
    r.deliver(msg(2))
    assert r.deliver(msg(1)) == "out_of_order"
    clock.now += 10
    accounting.expire()
    c = accounting.counts
    assert (c.delivered, c.lost, c.out_of_order) == (2, 0, 1)


def test_second_copy_is_a_duplicate(accounting):
    """A sequence seen twice counts one duplicate and one delivery."""
    r = accounting.receiver()
    r.open_window("r1", 0)
    r.deliver(msg(1))
    assert r.deliver(msg(1)) == "duplicate"
    assert (accounting.counts.delivered, accounting.counts.duplicated) == (1, 1)


def test_messages_before_the_join_head_are_not_expected(accounting, clock):
    """Sequences at or below the join head are outside the window and never become holes."""
    r = accounting.receiver()
    r.open_window("r1", 50)
    r.deliver(msg(51))
    clock.now += 60
    accounting.expire()
    assert accounting.counts.lost == 0


def test_leave_head_reveals_a_dropped_last_message(accounting):
    """The head in a leave or logout reply exposes a missing last message of the room."""
    r = accounting.receiver()
    r.open_window("r1", 0)
    r.deliver(msg(1))
    r.close_window("r1", 2)
    assert accounting.open_holes() == 1
    assert accounting.finalize() == 1
    assert accounting.counts.lost == 1


def test_message_landing_after_leave_fills_its_hole_in_order(accounting):
    """A message still on the wire at logout fills the head's hole without being out of order."""
    r = accounting.receiver()
    r.open_window("r1", 0)
    r.deliver(msg(1))
    r.close_window("r1", 3)
    r.deliver(msg(2))
    r.deliver(msg(3))
    assert accounting.finalize() == 0
    assert accounting.counts.out_of_order == 0


def test_broken_connection_owes_what_the_room_got_while_away(accounting, clock):
    """After a cut connection, the sequences posted while away are owed: history fills them, else they are lost."""
    r = accounting.receiver()
    r.open_window("r1", 0)
    r.deliver(msg(1))
    r.close_all(None)
    r.open_window("r1", 9)
    assert r.gaps() == {"r1": 2}
    assert r.recover([msg(seq) for seq in range(2, 7)]) == 5
    r.deliver(msg(10))
    clock.now += 60
    accounting.expire()
    assert (accounting.counts.recovered, accounting.counts.lost, accounting.counts.out_of_order) == (5, 3, 0)


def test_leaving_and_rejoining_owes_nothing_from_the_time_outside(accounting, clock):
    """A user who left a room (head known) is not owed what the room got before it came back."""
    r = accounting.receiver()
    r.open_window("r1", 0)
    r.deliver(msg(1))
    r.close_window("r1", 1)
    r.open_window("r1", 9)
    r.deliver(msg(10))
    clock.now += 60
    accounting.expire()
    assert accounting.counts.lost == 0
    assert r.gaps() == {}


def test_history_fills_holes_as_recovered(accounting, clock):
    """Holes filled from history count as recovered, including ones already counted lost."""
    r = accounting.receiver()
    r.open_window("r1", 0)
    r.deliver(msg(1))
    r.deliver(msg(4))
    clock.now += 6
    accounting.expire()
    assert accounting.counts.lost == 2
    assert r.gaps() == {"r1": 2}
    assert r.recover([msg(1), msg(2), msg(3), msg(4), msg(5)]) == 2
    c = accounting.counts
    assert (c.lost, c.recovered) == (0, 2)
    assert r.gaps() == {}


def test_own_acknowledged_message_is_not_a_hole(accounting, clock):
    """The sender's own message, known from its ack, is not expected as a push."""
    r = accounting.receiver()
    r.open_window("r1", 0)
    r.deliver(msg(1))
    r.own("r1", 2)
    r.deliver(msg(3))
    clock.now += 60
    accounting.expire()
    assert (accounting.counts.lost, accounting.counts.out_of_order) == (0, 0)


def test_push_overtaken_by_own_message_is_in_order(accounting):
    """A push arriving after our own later message was not reordered by the backend."""
    r = accounting.receiver()
    r.open_window("r1", 0)
    r.own("r1", 2)
    assert r.deliver(msg(1)) == "delivered"
    assert accounting.counts.out_of_order == 0


def test_inbox_is_a_stream_like_a_room(accounting):
    """Direct messages are accounted per inbox sequence, with the login head as window start."""
    r = accounting.receiver()
    r.open_window(INBOX, 3)
    r.deliver(msg(5, stream=INBOX))
    assert r.gaps() == {INBOX: 4}


def test_latency_is_receive_time_minus_intended_send_time(accounting, clock):
    """Latency is measured from the stamped send time, at microsecond resolution."""
    r = accounting.receiver()
    r.open_window("r1", 0)
    clock.now = 1000.0
    r.deliver(msg(1, sent_at=1000.0 - 0.0421))
    p = percentiles_ms(accounting.latency)
    assert p["p50"] == pytest.approx(42.1, abs=0.05)
    # Locust's table gets it at the histogram's resolution: three significant digits
    (gained,) = accounting.take_unreported()["msg.deliver"].items()
    assert gained == (pytest.approx(42.1, rel=1e-3), 1)
    assert accounting.take_unreported() == {}


def test_operation_percentiles_and_failures(accounting):
    """Operations keep their own histogram; failures are counted, not timed."""
    for ms in range(1, 101):
        accounting.record_operation("room.join", ms / 1000)
    accounting.record_operation("room.join", 5.0, failed=True)
    s = accounting.operations["room.join"].summary()
    assert s["count"] == 101 and s["failures"] == 1
    assert s["p50_ms"] == pytest.approx(50, rel=0.01)
    assert s["max_ms"] == pytest.approx(100, rel=0.01)


def from_sender(seq, sender="w0-u1", room="r1", sent_at=999.0):
    return Delivery(sender_stream(room, sender), seq, sender, seq, sent_at, sent_at)


def test_a_sender_stream_opens_at_its_first_message_and_finds_holes_after(accounting, clock):
    """Without a room sequence, a sender's own counter numbers its messages: followed from the first seen."""
    r = accounting.receiver()
    r.open_window("r1", 0)
    assert r.deliver(from_sender(5)) == "delivered"
    r.deliver(from_sender(7))
    clock.now += 6
    accounting.expire()
    assert (accounting.counts.delivered, accounting.counts.lost) == (2, 1)
    assert r.roaming_streams() == ["r1"]


def test_a_sender_stream_outside_its_room_window_is_not_judged(accounting):
    """A message on a sender stream of a room we are not in is counted but cannot be checked."""
    r = accounting.receiver()
    r.deliver(from_sender(3))
    r.deliver(from_sender(9))
    assert (accounting.counts.delivered, accounting.open_holes()) == (2, 0)


def test_history_after_a_rejoin_recovers_what_a_sender_sent_meanwhile(accounting, clock):
    """Away from the room, a sender went on: history above what we saw is recovered, what it skips is missing."""
    r = accounting.receiver()
    r.open_window("r1", 0)
    r.deliver(from_sender(1))
    r.close_window("r1", 0)
    r.open_window("r1", 0)
    assert r.recover([from_sender(1), from_sender(2), from_sender(4)]) == 2
    r.deliver(from_sender(5))
    clock.now += 6
    accounting.expire()
    counts = accounting.counts
    assert (counts.delivered, counts.recovered, counts.lost) == (2, 2, 1)


def test_recording_a_duration_fills_the_slot_hdrh_would():
    """record_seconds computes hdrh's slot itself; every magnitude lands where record_value puts it."""
    from loadgen.accounting import HIGHEST_TRACKABLE_US, new_histogram, record_seconds

    ours, theirs = new_histogram(), new_histogram()
    micros = [1, 2, 3, 1023, 1024, 2047, 2048, 2049, 123_456, 10**6 + 7, 59_999_999, HIGHEST_TRACKABLE_US]
    micros += [int(1.37**k) + k for k in range(70) if int(1.37**k) + k <= HIGHEST_TRACKABLE_US]
    for seconds in [m / 1e6 for m in micros] + [-0.5, 10**7]:
        record_seconds(ours, seconds)
        theirs.record_value(min(max(int(seconds * 1e6), 1), HIGHEST_TRACKABLE_US))
    assert list(ours.counts) == list(theirs.counts)
    assert ours.total_count == theirs.total_count == len(micros) + 2
    assert (ours.min_value, ours.max_value) == (theirs.min_value, theirs.max_value)
    assert ours.get_value_at_percentile(99) == theirs.get_value_at_percentile(99)


def test_what_goes_to_locusts_table_is_what_the_histograms_gained_since_the_last_look(accounting):
    """Operations and deliveries reach Locust's table once each, by name, whatever was recorded in between."""
    r = accounting.receiver()
    r.open_window("r1", 0)
    for ms in (1, 1, 5, 250):
        accounting.record_operation("room.join", ms / 1000)
    accounting.record_operation("room.join", 0.3, failed=True)
    accounting.record_fanout("seat.fanout", 0.002)
    first = accounting.take_unreported()
    assert {name: sum(batch.values()) for name, batch in first.items()} == {"room.join": 4, "seat.fanout": 1}
    assert sorted(first["room.join"].items()) == [
        (1.0, 2),
        (pytest.approx(5, rel=1e-3), 1),
        (pytest.approx(250, rel=1e-3), 1),
    ]
    accounting.record_operation("room.join", 0.007)
    accounting.operation("room.join").histogram.reset()
    for _ in range(6):  # refilled past the last look's total: still seen as a reset
        accounting.record_operation("room.join", 0.009)
    assert [*accounting.take_unreported()["room.join"].items()] == [(pytest.approx(9, rel=1e-3), 6)]
    assert accounting.take_unreported() == {}


def test_a_sequence_jumping_absurdly_far_is_refused_not_turned_into_holes(accounting):
    """A push with seq 10^12 raises ImplausibleSequence and leaves the stream as it was, instead of a trillion holes."""
    r = accounting.receiver()
    r.open_window("r1", 0)
    r.deliver(msg(1))
    with pytest.raises(ImplausibleSequence, match="from 1 to 1000000000000"):
        r.deliver(msg(10**12))
    assert r.gaps() == {} and accounting.counts.delivered == 1
    assert r.deliver(msg(2)) == "delivered"
