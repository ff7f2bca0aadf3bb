"""The Janus driver from bytes alone: request chains, answers and room events, with no server."""

import orjson
import pytest

from loadgen.drivers.base import (
    Failure,
    JoinResult,
    LeaveResult,
    LoginResult,
    LogoutResult,
    Malformed,
    Reply,
    Seat,
    SeatChange,
    SeatResult,
    SeatSnapshot,
    Unsupported,
)
from loadgen.drivers.janus import (
    AUDIOBRIDGE,
    KEEPALIVE_SECONDS,
    QUIET_SECONDS,
    VIDEOROOM,
    JanusDriver,
    room_number,
)
from loadgen.session import EXPECTED_REFUSALS

SESSION = 7001
AUDIO, MEMBER, SEAT = 11, 12, 13
ROOM = "voiceroom-3"
NUMBER = room_number(ROOM)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def loads(frame: bytes) -> dict:
    return orjson.loads(frame)


def feed(driver: JanusDriver, message: dict) -> list:
    return driver.receive(orjson.dumps(message), False)


def answer(driver: JanusDriver, request: dict, janus: str = "success", **fields) -> list:
    """Janus' answer to ``request``: its transaction echoed."""
    return feed(driver, {"janus": janus, "session_id": SESSION, "transaction": request["transaction"], **fields})


def plugin_answer(driver: JanusDriver, request: dict, data: dict, janus: str = "event") -> list:
    plugin = AUDIOBRIDGE if "audiobridge" in data or request["handle_id"] == AUDIO else VIDEOROOM
    return answer(driver, request, janus, sender=request["handle_id"], plugindata={"plugin": plugin, "data": data})


def push(driver: JanusDriver, sender: int, data: dict) -> list:
    """An event no request asked for, on handle ``sender``."""
    plugin = AUDIOBRIDGE if sender == AUDIO else VIDEOROOM
    return feed(driver, {"janus": "event", "session_id": SESSION, "sender": sender,
                         "plugindata": {"plugin": plugin, "data": data}})  # fmt: skip


def next_request(driver: JanusDriver) -> dict:
    [frame] = driver.pending()
    return loads(frame)


def next_request_is_detach(driver: JanusDriver, handle: int) -> bool:
    request = next_request(driver)
    return request["janus"] == "detach" and request["handle_id"] == handle


def display(**fields) -> str:
    return orjson.dumps(fields).decode()


def logged_in(user: str = "alice", **options) -> JanusDriver:
    driver = JanusDriver(monotonic=Clock(), wall=lambda: 500.0, **options)
    login = driver.login(user, "token")
    [reply] = answer(driver, loads(login.payload), data={"id": SESSION})
    assert reply == Reply(login.request_id, LoginResult(user, 0, 500.0))
    return driver


def enter(driver: JanusDriver, seats: int = 4, listeners=(), attendees=(), early=()) -> Reply:
    """Walk the join chain of a room that exists, Janus answering with the given lists."""
    join = driver.join_room(ROOM, seats=seats)
    assert answer(driver, loads(join.payload), data={"id": AUDIO}) == []
    assert plugin_answer(driver, next_request(driver), {"audiobridge": "joined", "room": NUMBER, "id": 901,
                                                        "participants": list(listeners)}) == []  # fmt: skip
    assert answer(driver, next_request(driver), data={"id": MEMBER}) == []
    request = next_request(driver)
    for data in early:
        assert push(driver, MEMBER, data) == []
    [reply] = plugin_answer(driver, request, {"videoroom": "joined", "room": NUMBER, "id": 5555,
                                              "publishers": [], "attendees": list(attendees)})  # fmt: skip
    assert reply.request_id == join.request_id
    return reply


def take(driver: JanusDriver, seat: int, sent_at: float) -> tuple[int, dict]:
    """Send a seat take up to the VideoRoom join; the join request is returned unanswered."""
    outgoing = driver.room_op("seat.take", ROOM, sent_at, seat=seat)
    assert answer(driver, loads(outgoing.payload), data={"id": SEAT}) == []
    return outgoing.request_id, next_request(driver)


def empty(seats: int = 4) -> tuple[Seat, ...]:
    return tuple(Seat(n, None) for n in range(seats))


def test_login_creates_a_session_that_every_later_request_names():
    """Login is Janus' create; later requests carry the session id, and the API secret when given."""
    driver = JanusDriver(apisecret="s3")
    login = loads(driver.login("alice", "t").payload)
    assert login["janus"] == "create" and login["apisecret"] == "s3" and "session_id" not in login
    answer(driver, login, data={"id": SESSION})
    join = loads(driver.join_room(ROOM, seats=4).payload)
    assert join == {"janus": "attach", "plugin": AUDIOBRIDGE, "transaction": join["transaction"],
                    "session_id": SESSION, "apisecret": "s3"}  # fmt: skip


def test_joining_creates_both_rooms_when_janus_has_none():
    """A room Janus lacks is created (AudioBridge, then VideoRoom with notify_joining) and joined."""
    driver = logged_in(admin_key="k")
    join = driver.join_room(ROOM, seats=6)
    answer(driver, loads(join.payload), data={"id": AUDIO})
    audio_join = next_request(driver)
    assert audio_join["handle_id"] == AUDIO and audio_join["body"]["room"] == NUMBER
    plugin_answer(driver, audio_join, {"audiobridge": "event", "error_code": 485, "error": "No such room"})
    create = next_request(driver)
    assert create["body"] == {"request": "create", "room": NUMBER, "description": ROOM, "admin_key": "k"}
    plugin_answer(driver, create, {"audiobridge": "created", "room": NUMBER}, janus="success")
    retry = next_request(driver)
    assert retry["body"] == audio_join["body"]
    # the next step waits for the join's answer, not for Janus' ack of it
    assert feed(driver, {"janus": "ack", "session_id": SESSION, "transaction": retry["transaction"]}) == []
    assert driver.pending() == []
    plugin_answer(driver, retry, {"audiobridge": "joined", "room": NUMBER, "id": 901, "participants": []})
    answer(driver, next_request(driver), data={"id": MEMBER})
    video_join = next_request(driver)
    assert video_join["body"]["ptype"] == "publisher" and "id" not in video_join["body"]
    plugin_answer(driver, video_join, {"videoroom": "event", "error_code": 426, "error": "No such room"})
    create = next_request(driver)
    assert create["body"] == {"request": "create", "room": NUMBER, "description": ROOM, "publishers": 6,
                              "notify_joining": True, "admin_key": "k"}  # fmt: skip
    # another member created it first: fine
    plugin_answer(driver, create, {"videoroom": "event", "error_code": 427, "error": "exists"}, janus="success")
    video_join = next_request(driver)
    [reply] = plugin_answer(driver, video_join, {"videoroom": "joined", "room": NUMBER, "id": 5555,
                                                 "publishers": [], "attendees": []})  # fmt: skip
    assert reply == Reply(join.request_id, JoinResult(ROOM, 0, 1, None, SeatSnapshot(ROOM, 0, empty(6)), False))


def test_the_join_reply_shows_who_sits_where_by_participant_id():
    """Seat n is the VideoRoom participant with id n + 1; members are everyone in the AudioBridge."""
    driver = logged_in()
    listeners = [{"id": 902, "display": display(u="bob"), "muted": False},
                 {"id": 903, "display": display(u="carol"), "muted": True}]  # fmt: skip
    attendees = [{"id": 3, "display": display(u="carol", ts=1.0, ab=903)},
                 {"id": 4242, "display": display(u="bob")}]  # fmt: skip
    reply = enter(driver, listeners=listeners, attendees=attendees)
    assert reply.result.members == 3
    seats = (Seat(0, None), Seat(1, None), Seat(2, "carol", True), Seat(3, None))
    assert reply.result.seats == SeatSnapshot(ROOM, 0, seats)


def test_taking_a_seat_joins_as_the_publisher_with_that_seats_id():
    """A seat take attaches a handle and joins as publisher id seat + 1, the take's time in the display."""
    driver = logged_in()
    enter(driver)
    request_id, join = take(driver, 2, 123.5)
    assert join["handle_id"] == SEAT
    body = join["body"]
    assert (body["ptype"], body["id"]) == ("publisher", 3)
    assert loads(body["display"].encode()) == {"u": "alice", "ts": 123.5, "ab": 901}
    [reply] = plugin_answer(driver, join, {"videoroom": "joined", "room": NUMBER, "id": 3, "attendees": []})
    assert reply == Reply(request_id, SeatResult(ROOM, 2, None))


def test_a_taken_seat_is_an_expected_refusal_and_frees_the_handle():
    """Janus' "ID exists" answer is the refusal seat_taken, and the unused handle is detached."""
    driver = logged_in()
    enter(driver)
    request_id, join = take(driver, 1, 1.0)
    exists = {"videoroom": "event", "error_code": 436, "error": "User ID 2 already exists"}
    [failure] = plugin_answer(driver, join, exists)
    assert failure == Failure(request_id, "seat_taken", "seat 1 is taken")
    assert "seat_taken" in EXPECTED_REFUSALS["seat.take"]
    assert next_request_is_detach(driver, SEAT)


def test_refusals_the_driver_knows_itself_still_get_their_reply_from_a_frame():
    """A second take while seated is refused already_seated, on the answer to a keepalive."""
    driver = logged_in()
    enter(driver)
    _, join = take(driver, 0, 1.0)
    plugin_answer(driver, join, {"videoroom": "joined", "room": NUMBER, "id": 1, "attendees": []})
    again = driver.room_op("seat.take", ROOM, 2.0, seat=1)
    keepalive = loads(again.payload)
    assert keepalive["janus"] == "keepalive"
    [failure] = answer(driver, keepalive, janus="ack")
    assert (failure.request_id, failure.code) == (again.request_id, "already_seated")
    leave = driver.room_op("seat.leave", "voiceroom-9", 3.0)
    [failure] = answer(driver, loads(leave.payload), janus="ack")
    assert failure.code == "not_member"


def test_seat_events_number_and_version_the_same_way_for_every_member():
    """Two members fed the same Janus events see the same seats, versions and changes."""
    members = [logged_in("alice"), logged_in("bob")]
    attendees = [{"id": 1, "display": display(u="carol", ts=1.0, ab=903)}]
    for driver in members:
        enter(driver, attendees=attendees)
    events = [
        {"videoroom": "event", "room": NUMBER, "joining": {"id": 3, "display": display(u="dave", ts=10.0, ab=904)}},
        {"videoroom": "event", "id": 1, "display": display(u="carol", ts=11.0, ab=903, leave=True)},
        {"videoroom": "event", "room": NUMBER, "leaving": 1},
        {"videoroom": "event", "room": NUMBER, "unpublished": 3},
        {"videoroom": "event", "room": NUMBER, "joining": {"id": 77777, "display": display(u="erin")}},
        {"videoroom": "event", "room": NUMBER, "joining": {"id": 1, "display": display(u="erin", ts=12.0, ab=905)}},
    ]
    seen = [[snapshot for data in events for snapshot in push(driver, MEMBER, data)] for driver in members]
    assert seen[0] == seen[1]
    assert seen[0] == [
        SeatSnapshot(ROOM, 1, (Seat(0, "carol"), Seat(1, None), Seat(2, "dave"), Seat(3, None)),
                     SeatChange("take", 2, "dave", "dave", 10.0)),
        SeatSnapshot(ROOM, 2, (Seat(0, None), Seat(1, None), Seat(2, "dave"), Seat(3, None)),
                     SeatChange("leave", 0, "carol", "carol", 11.0)),
        SeatSnapshot(ROOM, 3, (Seat(0, "erin"), Seat(1, None), Seat(2, "dave"), Seat(3, None)),
                     SeatChange("take", 0, "erin", "erin", 12.0)),
    ]  # fmt: skip


def test_a_leave_nobody_announced_changes_the_seats_without_a_change():
    """A seat freed by a dropped connection has no actor time: the snapshot comes with no change."""
    driver = logged_in()
    enter(driver, attendees=[{"id": 2, "display": display(u="carol", ts=1.0, ab=903)}])
    [snapshot] = push(driver, MEMBER, {"videoroom": "event", "room": NUMBER, "leaving": 2})
    assert snapshot == SeatSnapshot(ROOM, 1, empty(), None)


def test_leaving_a_seat_announces_its_time_then_leaves():
    """seat.leave sets the display to the leave's time first, since Janus' leave event carries none."""
    driver = logged_in()
    enter(driver)
    _, join = take(driver, 0, 1.0)
    plugin_answer(driver, join, {"videoroom": "joined", "room": NUMBER, "id": 1, "attendees": []})
    leave = driver.room_op("seat.leave", ROOM, 42.0)
    configure = loads(leave.payload)
    assert configure["handle_id"] == SEAT and configure["body"]["request"] == "configure"
    assert loads(configure["body"]["display"].encode()) == {"u": "alice", "ts": 42.0, "ab": 901, "leave": True}
    plugin_answer(driver, configure, {"videoroom": "event", "room": NUMBER, "configured": "ok"})
    request = next_request(driver)
    assert request["body"] == {"request": "leave"}
    [reply] = plugin_answer(driver, request, {"videoroom": "event", "room": NUMBER, "leaving": "ok"})
    assert reply == Reply(leave.request_id, SeatResult(ROOM, 0, None))
    assert next_request_is_detach(driver, SEAT)


def test_events_that_overtake_the_join_answer_are_applied_on_top_of_its_list():
    """A leave seen before the join answer that still lists the seat leaves the seat empty."""
    driver = logged_in()
    reply = enter(
        driver,
        attendees=[{"id": 1, "display": display(u="carol", ts=1.0, ab=903)}],
        early=[{"videoroom": "event", "room": NUMBER, "leaving": 1}],
    )
    assert reply.result.seats == SeatSnapshot(ROOM, 0, empty())
    [snapshot] = push(driver, MEMBER, {"videoroom": "event", "room": NUMBER,
                                       "joining": {"id": 1, "display": display(u="dave", ts=5.0, ab=904)}})  # fmt: skip
    assert snapshot.version == 1 and snapshot.change == SeatChange("take", 0, "dave", "dave", 5.0)


def test_a_mute_reaches_every_member_with_the_actors_time():
    """The muting member announces its time in its AudioBridge display; members read it back on the mute."""
    host, listener = logged_in("host"), logged_in("bob")
    attendees = [{"id": 2, "display": display(u="carol", ts=1.0, ab=903)}]
    for driver in (host, listener):
        enter(driver, listeners=[{"id": 903, "display": display(u="carol"), "muted": False}], attendees=attendees)
    mute = host.room_op("seat.mute", ROOM, 50.0, seat=1, muted=True)
    configure = loads(mute.payload)
    assert configure["handle_id"] == AUDIO and loads(configure["body"]["display"].encode())["mute"] == 903
    # what Janus pushes to the other member: the announcement, then the mute
    assert push(listener, AUDIO, {"audiobridge": "event", "room": NUMBER, "participants": [
        {"id": 904, "display": display(u="host", ts=50.0, mute=903), "muted": False}]}) == []  # fmt: skip
    plugin_answer(host, configure, {"audiobridge": "event", "result": "ok"})
    request = next_request(host)
    assert request["body"] == {"request": "mute", "room": NUMBER, "id": 903}
    muted = {"audiobridge": "event", "room": NUMBER, "participants": [
        {"id": 903, "display": display(u="carol"), "muted": True}]}  # fmt: skip
    expected = SeatSnapshot(ROOM, 1, (Seat(0, None), Seat(1, "carol", True), Seat(2, None), Seat(3, None)),
                            SeatChange("mute", 1, "carol", "host", 50.0))  # fmt: skip
    assert push(listener, AUDIO, muted) == [expected]
    assert push(host, AUDIO, muted) == [expected]
    [reply] = plugin_answer(host, request, {"audiobridge": "success", "room": NUMBER}, janus="success")
    assert reply == Reply(mute.request_id, SeatResult(ROOM, 1, None))


def test_leaving_the_room_leaves_the_seat_first():
    """room.leave while seated announces and leaves the seat, then both rooms, and lets the handles go."""
    driver = logged_in()
    enter(driver)
    _, join = take(driver, 0, 1.0)
    plugin_answer(driver, join, {"videoroom": "joined", "room": NUMBER, "id": 1, "attendees": []})
    leave = driver.leave(ROOM)
    configure = loads(leave.payload)
    assert loads(configure["body"]["display"].encode())["ts"] == 500.0
    plugin_answer(driver, configure, {"videoroom": "event", "configured": "ok"})
    request = next_request(driver)
    plugin_answer(driver, request, {"videoroom": "event", "leaving": "ok"})
    frames = [loads(f) for f in driver.pending()]
    assert [(f["janus"], f["handle_id"]) for f in frames] == [("detach", SEAT), ("message", MEMBER)]
    plugin_answer(driver, frames[1], {"videoroom": "event", "leaving": "ok"})
    request = next_request(driver)
    assert (request["handle_id"], request["body"]) == (AUDIO, {"request": "leave"})
    [reply] = plugin_answer(driver, request, {"audiobridge": "left", "room": NUMBER, "id": 901})
    assert reply == Reply(leave.request_id, LeaveResult(ROOM, 0))
    assert sorted(f["handle_id"] for f in map(loads, driver.pending())) == [AUDIO, MEMBER]
    # events on the let-go handles are ignored
    assert push(driver, MEMBER, {"videoroom": "event", "room": NUMBER, "leaving": 3}) == []


def test_keepalives_go_out_only_after_a_quiet_spell():
    """A keepalive is due when nothing was sent for the keepalive interval, and its ack is silent."""
    driver = logged_in()
    clock = driver.monotonic
    clock.now += KEEPALIVE_SECONDS - 1
    assert driver.pending() == []
    clock.now += 1
    keepalive = next_request(driver)
    assert keepalive["janus"] == "keepalive" and keepalive["session_id"] == SESSION
    assert driver.pending() == []
    assert answer(driver, keepalive, janus="ack") == []
    clock.now += KEEPALIVE_SECONDS - 1
    driver.join_room(ROOM)
    clock.now += KEEPALIVE_SECONDS - 1
    assert driver.pending() == [], "a request sent meanwhile keeps the session alive as well"


def test_no_keepalive_before_a_session_exists():
    """Before login is answered there is no session to keep alive."""
    driver = JanusDriver(monotonic=Clock())
    driver.monotonic.now += 10 * KEEPALIVE_SECONDS
    assert driver.pending() == []


def test_janus_errors_end_the_operation_they_answer():
    """A core error (no such session) fails its operation; a session timeout is reported untied."""
    driver = logged_in()
    join = driver.join_room(ROOM)
    [failure] = answer(driver, loads(join.payload), janus="error", error={"code": 458, "reason": "No such session"})
    assert failure == Failure(join.request_id, "janus_458", "No such session")
    [failure] = feed(driver, {"janus": "timeout", "session_id": SESSION})
    assert failure.request_id is None and failure.code == "session_timeout"


def test_garbage_is_malformed_never_raised():
    """Non-JSON, binary frames, unknown messages and broken events are reported as Malformed."""
    driver = logged_in()
    enter(driver)
    assert isinstance(driver.receive(b"{nope", False)[0], Malformed)
    assert isinstance(driver.receive(b"\x00\x01", True)[0], Malformed)
    assert isinstance(feed(driver, {"janus": "surprise"})[0], Malformed)
    assert isinstance(feed(driver, ["not", "an", "object"])[0], Malformed)
    [bad] = feed(driver, {"janus": "event", "sender": MEMBER, "plugindata": {"data": {"joining": {"display": "x"}}}})
    assert isinstance(bad, Malformed)


def test_what_janus_cannot_express_is_unsupported():
    """Messages, gifts, danmaku, settings, locks, invites and clock sync are refused up front."""
    driver = logged_in()
    for op in ("gift", "danmaku", "settings", "seat.lock", "seat.invite", "pk.invite"):
        assert op not in JanusDriver.supports
        with pytest.raises(Unsupported):
            driver.room_op(op, ROOM, 1.0)
    with pytest.raises(Unsupported):
        driver.send(ROOM, 1, 1.0, "hi")
    with pytest.raises(Unsupported):
        driver.clock(1.0)
    assert {"room.join", "room.leave", "seat.take", "seat.leave", "seat.mute"} <= JanusDriver.supports


def test_the_host_url_gives_the_websocket_url_and_janus_secrets():
    """janus+ws:// becomes ws://; apisecret and admin_key leave the query for the driver."""
    factory, url = JanusDriver.configure("janus+ws://127.0.0.1:8188/?apisecret=a&admin_key=b&x=1")
    assert url == "ws://127.0.0.1:8188/?x=1"
    driver = factory()
    assert (driver.apisecret, driver.admin_key) == ("a", "b")
    assert JanusDriver.configure("janus+wss://janus.example/ws")[1] == "wss://janus.example/ws"


def test_room_numbers_are_stable_and_json_safe():
    """A decimal room name is its own number; others hash to the same number on every run."""
    assert room_number("1234") == 1234
    assert room_number(ROOM) == room_number("voiceroom-3") != room_number("voiceroom-4")
    assert 0 < room_number(ROOM) < 2**53


def test_a_kick_names_the_kicker_and_its_time_and_unseats_the_kicked():
    """The kicker announces in its VideoRoom display; the kicked member sees its seat go and lets its handle go."""
    host, kicked = logged_in("host"), logged_in("carol")
    for driver in (host, kicked):
        enter(driver)
    _, join = take(kicked, 1, 1.0)
    plugin_answer(kicked, join, {"videoroom": "joined", "room": NUMBER, "id": 2, "attendees": []})
    seated = {"id": 2, "display": display(u="carol", ts=1.0, ab=901)}
    joining = {"videoroom": "event", "room": NUMBER, "joining": seated}
    for driver in (host, kicked):
        push(driver, MEMBER, joining)
    kick = host.room_op("seat.kick", ROOM, 60.0, seat=1)
    configure = loads(kick.payload)
    assert configure["handle_id"] == MEMBER and loads(configure["body"]["display"].encode())["kick"] == 2
    assert push(kicked, MEMBER, {"videoroom": "event", "id": 5555, "display": display(u="host", ts=60.0, kick=2)}) == []
    plugin_answer(host, configure, {"videoroom": "event", "configured": "ok"})
    request = next_request(host)
    assert request["body"] == {"request": "kick", "room": NUMBER, "id": 2}
    assert push(kicked, SEAT, {"videoroom": "event", "room": NUMBER, "leaving": "ok", "reason": "kicked"}) == []
    assert next_request_is_detach(kicked, SEAT)
    kicked_event = {"videoroom": "event", "room": NUMBER, "kicked": 2}
    expected = SeatSnapshot(ROOM, 2, empty(), SeatChange("kick", 1, "carol", "host", 60.0))
    assert push(host, MEMBER, kicked_event) == [expected]
    assert push(kicked, MEMBER, kicked_event) == [expected]
    [reply] = plugin_answer(host, request, {"videoroom": "success"}, janus="success")
    assert reply == Reply(kick.request_id, SeatResult(ROOM, 1, None))


def test_a_seat_of_ones_own_lost_unannounced_still_shows_as_a_change():
    """This member's own seat vanishing without an announcement is a change stamped when seen, never silent."""
    driver = logged_in()
    enter(driver, attendees=[{"id": 1, "display": display(u="alice", ts=1.0, ab=901)}])
    [snapshot] = push(driver, MEMBER, {"videoroom": "event", "room": NUMBER, "leaving": 1})
    assert snapshot.change == SeatChange("leave", 0, "alice", None, 500.0)


def test_a_member_sees_its_own_mute():
    """The muted member's own mute arrives as an event like anyone's and changes its seat."""
    driver = logged_in("carol")
    enter(driver, attendees=[{"id": 1, "display": display(u="carol", ts=1.0, ab=901)}])
    push(driver, AUDIO, {"audiobridge": "event", "room": NUMBER, "participants": [
        {"id": 904, "display": display(u="host", ts=7.0, mute=901), "muted": False}]})  # fmt: skip
    [snapshot] = push(driver, AUDIO, {"audiobridge": "event", "room": NUMBER, "participants": [
        {"id": 901, "display": display(u="carol"), "muted": True}]})  # fmt: skip
    assert snapshot.seats[0] == Seat(0, "carol", True)
    assert snapshot.change == SeatChange("mute", 0, "carol", "host", 7.0)


def test_logout_waits_for_operations_under_way():
    """A logout while a join is between steps destroys the session only once the connection is quiet."""
    driver = logged_in()
    clock = driver.monotonic
    join = driver.join_room(ROOM)
    logout = driver.logout()
    keepalive = loads(logout.payload)
    assert keepalive["janus"] == "keepalive"
    assert answer(driver, keepalive, janus="ack") == []
    clock.now += QUIET_SECONDS
    assert driver.pending() == []
    assert answer(driver, loads(join.payload), data={"id": AUDIO}) == []
    audio_join = next_request(driver)
    [failure] = plugin_answer(driver, audio_join, {"audiobridge": "event", "error_code": 490, "error": "x"})
    assert (failure.request_id, failure.code) == (join.request_id, "janus_490")
    # the join's caller may go straight on to another operation: not yet
    assert next_request_is_detach(driver, AUDIO)
    clock.now += QUIET_SECONDS
    destroy = next_request(driver)
    assert destroy["janus"] == "destroy"
    [reply] = answer(driver, destroy)
    assert reply == Reply(logout.request_id, LogoutResult({}, 0))


def test_logout_with_nothing_under_way_destroys_at_once():
    """An idle connection's logout is Janus' destroy, answered by the logout result."""
    driver = logged_in()
    driver.monotonic.now += QUIET_SECONDS
    logout = driver.logout()
    destroy = loads(logout.payload)
    assert destroy["janus"] == "destroy" and destroy["session_id"] == SESSION
    assert answer(driver, destroy) == [Reply(logout.request_id, LogoutResult({}, 0))]


@pytest.mark.parametrize(
    "op, fields, error",
    [("seat.mute", {"muted": True}, {"audiobridge": "event", "error_code": 492, "error": "No such user"}),
     ("seat.kick", {}, {"videoroom": "event", "error_code": 428, "error": "No such user"})],
)  # fmt: skip
def test_muting_or_kicking_someone_already_gone_is_the_refusal_not_seated(op, fields, error):
    """Janus' "no such user" for a mute or kick means the seat emptied meanwhile: an expected refusal."""
    driver = logged_in("host")
    enter(driver, attendees=[{"id": 2, "display": display(u="carol", ts=1.0, ab=903)}])
    outgoing = driver.room_op(op, ROOM, 9.0, seat=1, **fields)
    configure = loads(outgoing.payload)
    plugin_answer(driver, configure, {"audiobridge" if op == "seat.mute" else "videoroom": "event", "result": "ok"})
    [failure] = plugin_answer(driver, next_request(driver), error, janus="success")
    assert (failure.request_id, failure.code) == (outgoing.request_id, "not_seated")
    assert "not_seated" in EXPECTED_REFUSALS[op]
