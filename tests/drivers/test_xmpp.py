"""The XMPP driver from bytes alone: the stanzas it writes, the events it reads, what it refuses."""

import base64
import time

import pytest

from loadgen.drivers.base import (
    INBOX,
    Delivery,
    Failure,
    HistoryResult,
    JoinResult,
    LeaveResult,
    LoginResult,
    LogoutResult,
    Malformed,
    ReadResult,
    Receipt,
    Reply,
    SendResult,
    Unsupported,
    sender_stream,
)
from loadgen.drivers.xmpp import XmppDriver, parse
from loadgen.errors import ConfigError

CLIENT = "xmlns='jabber:client'"
FRAMING = "xmlns='urn:ietf:params:xml:ns:xmpp-framing'"
FEATURES_AUTH = (
    "<stream:features xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1</mechanism>"
    "<mechanism>{mechanism}</mechanism></mechanisms>"
    "<register xmlns='http://jabber.org/features/iq-register'/></stream:features>"
)
FEATURES_BIND = (
    "<stream:features xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><required/></bind></stream:features>"
)
JID = "loadgen-u1@localhost/r1"
ROOM = "chat-1@conference.localhost"
STATUS_SELF = "<status code='110'/>"


def feed(driver: XmppDriver, frame: str) -> list:
    return driver.receive(frame.encode(), False)


def sent(driver: XmppDriver) -> list:
    """What the driver queued to send on its own, parsed."""
    return [parse(frame) for frame in driver.pending()]


def log_in(driver: XmppDriver, user: str = "u1") -> LoginResult:
    """Walk the driver through a whole login with the frames Prosody sends, answering every step."""
    login = driver.login(user, "secret")
    feed(driver, f"<open {FRAMING} version='1.0' from='localhost' id='s1'/>")
    feed(driver, FEATURES_AUTH.format(mechanism="PLAIN"))
    for stanza in sent(driver):
        if stanza.tag == "{jabber:client}iq":
            feed(driver, f"<iq {CLIENT} type='result' id='{stanza.get('id')}'/>")
    driver.pending()
    feed(driver, "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
    driver.pending()
    feed(driver, FEATURES_BIND)
    [bind] = sent(driver)
    feed(
        driver,
        f"<iq {CLIENT} type='result' id='{bind.get('id')}'>"
        f"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>{JID}</jid></bind></iq>",
    )
    [presence] = sent(driver)
    [reply] = feed(driver, f"<presence {CLIENT} from='{JID}' id='{presence.get('id')}'/>")
    assert reply.request_id == login.request_id
    return reply.result


def joined(driver: XmppDriver, room: str = "chat-1") -> None:
    join = driver.join(room)
    [reply] = feed(
        driver,
        f"<presence {CLIENT} from='{ROOM}/u1' id='x'><x xmlns='http://jabber.org/protocol/muc#user'>"
        f"{STATUS_SELF}</x></presence>",
    )
    assert reply.request_id == join.request_id


@pytest.fixture
def driver() -> XmppDriver:
    d = XmppDriver()
    log_in(d)
    d.pending()
    return d


def test_the_url_picks_domain_muc_auth_and_the_websocket_address():
    """The query configures the driver and is dropped from the ws:// URL it connects to."""
    factory, url = XmppDriver.configure("xmpp+wss://chat.example:443/ws?domain=example.org&auth=plain&prefix=")
    d = factory()
    assert url == "wss://chat.example:443/ws"
    assert (d.domain, d.muc, d.auth, d.prefix) == ("example.org", "conference.example.org", "plain", "")
    factory, url = XmppDriver.configure("xmpp+ws://127.0.0.1:5280/xmpp-websocket")
    d = factory()
    assert url == "ws://127.0.0.1:5280/xmpp-websocket"
    assert (d.domain, d.muc, d.auth, d.prefix) == ("localhost", "conference.localhost", "register", "loadgen-")
    assert d.archived_after <= time.time()


@pytest.mark.parametrize(
    "query, key", [("auth=kerberos", "auth"), ("domian=x", "domian")], ids=["bad-value", "unknown-key"]
)
def test_a_bad_url_option_is_a_configuration_error_naming_the_key(query, key):
    """An unknown option or auth mode is refused, naming the key."""
    with pytest.raises(ConfigError) as caught:
        XmppDriver.configure(f"xmpp+ws://127.0.0.1:5280/ws?{query}")
    assert caught.value.key == key


def test_login_registers_authenticates_binds_and_is_answered_by_the_reflected_presence():
    """One login opens the stream, registers, authenticates with PLAIN, restarts, binds and goes available."""
    d = XmppDriver()
    login = d.login("u1", "secret")
    opened = parse(login.payload)
    assert opened.tag == "{urn:ietf:params:xml:ns:xmpp-framing}open" and opened.get("to") == "localhost"
    assert feed(d, f"<open {FRAMING} version='1.0' from='localhost' id='s1'/>") == []
    assert feed(d, FEATURES_AUTH.format(mechanism="PLAIN")) == []
    [register] = sent(d)
    query = register.find("{jabber:iq:register}query")
    assert (query.findtext("{jabber:iq:register}username"), query.findtext("{jabber:iq:register}password")) == (
        "loadgen-u1",
        "secret",
    )
    feed(d, f"<iq {CLIENT} type='result' id='{register.get('id')}'/>")
    [auth] = sent(d)
    assert auth.get("mechanism") == "PLAIN"
    assert base64.b64decode(auth.text) == b"\0loadgen-u1\0secret"
    feed(d, "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
    [restart] = sent(d)
    assert restart.tag == "{urn:ietf:params:xml:ns:xmpp-framing}open"
    feed(d, f"<open {FRAMING} version='1.0' from='localhost' id='s2'/>")
    feed(d, FEATURES_BIND)
    [bind] = sent(d)
    assert bind.find("{urn:ietf:params:xml:ns:xmpp-bind}bind") is not None
    bound = f"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>{JID}</jid></bind>"
    feed(d, f"<iq {CLIENT} type='result' id='{bind.get('id')}'>{bound}</iq>")
    [presence] = sent(d)
    assert presence.tag == "{jabber:client}presence" and presence.get("type") is None
    [reply] = feed(d, f"<presence {CLIENT} from='{JID}' id='{presence.get('id')}'/>")
    assert reply == Reply(login.request_id, LoginResult("u1", 0, 0.0))
    assert d.jid == JID


def test_an_account_that_exists_logs_in_and_other_refusals_fail_the_login():
    """A registration conflict goes on to authenticate; any other refusal, or a SASL failure, ends the login."""
    d = XmppDriver()
    d.login("u1", "secret")
    feed(d, FEATURES_AUTH.format(mechanism="PLAIN"))
    [register] = sent(d)
    conflict = "<error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
    assert feed(d, f"<iq {CLIENT} type='error' id='{register.get('id')}'>{conflict}</iq>") == []
    [auth] = sent(d)
    assert auth.tag == "{urn:ietf:params:xml:ns:xmpp-sasl}auth"
    [failure] = feed(
        d, "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/><text>bad password</text></failure>"
    )
    assert isinstance(failure, Failure) and failure.code == "auth_failed"
    assert failure.message == "not-authorized: bad password"

    d = XmppDriver()
    login = d.login("u1", "secret")
    feed(d, FEATURES_AUTH.format(mechanism="PLAIN"))
    [register] = sent(d)
    refused = "<error type='cancel'><not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
    [failure] = feed(d, f"<iq {CLIENT} type='error' id='{register.get('id')}'>{refused}</iq>")
    assert (failure.request_id, failure.code) == (login.request_id, "register_failed")


def test_plain_skips_registration_and_anonymous_asks_for_no_name():
    """auth=plain authenticates at once; auth=anonymous uses SASL ANONYMOUS; a missing mechanism fails."""
    d = XmppDriver(auth="plain")
    d.login("u1", "pw")
    feed(d, FEATURES_AUTH.format(mechanism="PLAIN"))
    [auth] = sent(d)
    assert auth.get("mechanism") == "PLAIN"
    d = XmppDriver(auth="anonymous", domain="anon.localhost")
    d.login("u1", "pw")
    feed(d, FEATURES_AUTH.format(mechanism="ANONYMOUS"))
    [auth] = sent(d)
    assert auth.get("mechanism") == "ANONYMOUS" and not auth.text
    d = XmppDriver(auth="anonymous")
    d.login("u1", "pw")
    [failure] = feed(d, FEATURES_AUTH.format(mechanism="PLAIN"))
    assert failure.code == "auth_unsupported"


def test_every_stanza_is_one_element_in_the_client_namespace(driver):
    """RFC 7395: each frame is one stanza that carries xmlns='jabber:client' itself."""
    frames = [
        driver.join("chat-1").payload,
        driver.send("chat-1", 1, 1.5, "hi").payload,
        driver.direct("u2", 1, 1.5, "yo").payload,
        driver.read(sender_stream("chat-1", "u2"), 3).payload,
        driver.history("chat-1", 0, 50).payload,
        driver.leave("chat-1").payload,
        driver.logout().payload,
    ]
    assert all(parse(frame).tag.startswith("{jabber:client}") for frame in frames)


def test_joining_a_room_asks_for_no_history_and_counts_the_occupants(driver):
    """The join presence goes to room/nick without history; the reply comes with our own presence (110)."""
    join = driver.join("chat-1")
    presence = parse(join.payload)
    assert presence.get("to") == f"{ROOM}/u1"
    history = presence.find("{http://jabber.org/protocol/muc}x/{http://jabber.org/protocol/muc}history")
    assert history.get("maxstanzas") == "0"
    muc_user = "<x xmlns='http://jabber.org/protocol/muc#user'><item role='participant'/>{}</x>"
    assert feed(driver, f"<presence {CLIENT} from='{ROOM}/u7'>{muc_user.format('')}</presence>") == []
    assert feed(driver, f"<presence {CLIENT} from='{ROOM}/u8'>{muc_user.format('')}</presence>") == []
    [reply] = feed(driver, f"<presence {CLIENT} from='{ROOM}/u1'>{muc_user.format(STATUS_SELF)}</presence>")
    assert reply == Reply(join.request_id, JoinResult("chat-1", 0, 3))
    assert driver.pending() == []


def test_a_new_room_is_opened_with_the_instant_configuration(driver):
    """Creating a room (status 201) submits the empty owner form that unlocks it on servers that lock."""
    join = driver.join("chat-9")
    [reply] = feed(
        driver,
        f"<presence {CLIENT} from='chat-9@conference.localhost/u1'><x xmlns='http://jabber.org/protocol/muc#user'>"
        "<status code='201'/><status code='110'/></x></presence>",
    )
    assert reply.request_id == join.request_id
    [form] = sent(driver)
    assert form.get("to") == "chat-9@conference.localhost"
    x = form.find("{http://jabber.org/protocol/muc#owner}query/{jabber:x:data}x")
    assert x.get("type") == "submit"
    assert feed(driver, f"<iq {CLIENT} type='result' id='{form.get('id')}'/>") == []


def test_a_refused_join_and_a_leave_are_answered(driver):
    """An error presence fails the join; the leave is answered by our own unavailable presence."""
    join = driver.join("chat-1")
    [failure] = feed(
        driver,
        f"<presence {CLIENT} type='error' from='{ROOM}/u1'><error type='cancel'>"
        "<conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>",
    )
    assert failure == Failure(join.request_id, "conflict", "")
    joined(driver)
    leave = driver.leave("chat-1")
    assert parse(leave.payload).get("type") == "unavailable"
    [reply] = feed(
        driver,
        f"<presence {CLIENT} type='unavailable' from='{ROOM}/u1'>"
        f"<x xmlns='http://jabber.org/protocol/muc#user'>{STATUS_SELF}</x></presence>",
    )
    assert reply == Reply(leave.request_id, LeaveResult("chat-1", 0))


def test_a_room_message_carries_the_stamp_and_its_reflection_answers_the_send(driver):
    """The groupchat carries cseq and ts; the room's copy back to us is the send's reply on our sender stream."""
    joined(driver)
    send = driver.send("chat-1", 7, 1700000000.123456, "a <b> & c")
    message = parse(send.payload)
    assert (message.get("type"), message.get("to")) == ("groupchat", ROOM)
    assert message.findtext("{jabber:client}body") == "a <b> & c"
    stamp = message.find("{urn:loadgen:stamp}stamp")
    assert (stamp.get("cseq"), float(stamp.get("ts"))) == ("7", 1700000000.123456)
    [reply] = feed(driver, send.payload.decode().replace(f"to='{ROOM}'", f"from='{ROOM}/u1'"))
    assert reply == Reply(send.request_id, SendResult(sender_stream("chat-1", "u1"), 7, 0.0))


def test_another_members_message_is_a_delivery_on_its_sender_stream(driver):
    """A stamped groupchat from another nick is delivered on room#nick numbered by its cseq."""
    joined(driver)
    frame = (
        f"<message {CLIENT} type='groupchat' id='lg.4.chat-1' from='{ROOM}/u2'><body>hi</body>"
        "<stamp xmlns='urn:loadgen:stamp' cseq='4' ts='12.5'/><stanza-id xmlns='urn:xmpp:sid:0' id='x'/></message>"
    )
    [delivery] = feed(driver, frame)
    assert delivery == Delivery(sender_stream("chat-1", "u2"), 4, "u2", 4, 12.5, 0.0, "hi", False)


def test_replayed_subjects_and_foreign_messages_are_not_deliveries(driver):
    """A delayed copy, the room subject and a message without a stamp are ignored, not malformed."""
    joined(driver)
    delayed = (
        f"<message {CLIENT} type='groupchat' from='{ROOM}/u2'><body>old</body>"
        "<stamp xmlns='urn:loadgen:stamp' cseq='1' ts='1.0'/>"
        "<delay xmlns='urn:xmpp:delay' stamp='2024-01-01T00:00:00Z'/></message>"
    )
    assert feed(driver, delayed) == []
    assert feed(driver, f"<message {CLIENT} type='groupchat' from='{ROOM}'><subject/></message>") == []
    assert feed(driver, f"<message {CLIENT} type='chat' from='someone@localhost/x'><body>hey</body></message>") == []


def test_a_direct_message_is_sent_at_once_and_delivered_on_the_inbox_sender_stream(driver):
    """dm.send needs no answer; an incoming chat is delivered on @inbox#sender, the sender from its JID."""
    dm = driver.direct("u2", 3, 5.0, "yo")
    message = parse(dm.payload)
    assert (message.get("type"), message.get("to")) == ("chat", "loadgen-u2@localhost")
    assert dm.done == SendResult(sender_stream(INBOX, "u2"), 3, 0.0)
    frame = (
        f"<message {CLIENT} type='chat' from='loadgen-u9@localhost/abc' to='loadgen-u1@localhost'>"
        "<body>yo</body><stamp xmlns='urn:loadgen:stamp' cseq='2' ts='6.0'/></message>"
    )
    [delivery] = feed(driver, frame)
    assert delivery == Delivery(sender_stream(INBOX, "u9"), 2, "u9", 2, 6.0, 0.0, "yo", True)


def test_read_sends_a_receipt_to_the_author_and_receipts_decode_to_room_and_seq(driver):
    """A read becomes an unarchived XEP-0184 receipt naming room and cseq; one arriving decodes back."""
    read = driver.read(sender_stream("chat-1", "u2"), 5)
    receipt = parse(read.payload)
    assert receipt.get("to") == "loadgen-u2@localhost"
    assert receipt.find("{urn:xmpp:receipts}received").get("id") == "lg.5.chat-1"
    assert receipt.find("{urn:xmpp:hints}no-store") is not None
    assert read.done == ReadResult(sender_stream("chat-1", "u2"), 5)
    frame = (
        f"<message {CLIENT} type='chat' from='loadgen-u2@localhost/x'>"
        "<received xmlns='urn:xmpp:receipts' id='lg.12.chat-1'/></message>"
    )
    assert feed(driver, frame) == [Receipt("chat-1", 12, "u2")]
    with pytest.raises(ValueError):
        driver.read("chat-1", 5)


def test_history_asks_the_archive_for_the_last_page_and_decodes_it_like_live_messages():
    """A room query goes to the room's archive; results become deliveries on sender streams, older runs left out."""
    d = XmppDriver(archived_after=100.0)
    log_in(d)
    d.pending()
    history = d.history("chat-1", 0, 50)
    iq = parse(history.payload)
    query = iq.find("{urn:xmpp:mam:2}query")
    assert iq.get("to") == ROOM
    assert query.findtext("{http://jabber.org/protocol/rsm}set/{http://jabber.org/protocol/rsm}max") == "50"
    assert query.find("{http://jabber.org/protocol/rsm}set/{http://jabber.org/protocol/rsm}before") is not None
    fields = {f.get("var"): f.findtext("{jabber:x:data}value") for f in query.iter("{jabber:x:data}field")}
    assert fields == {"FORM_TYPE": "urn:xmpp:mam:2", "start": "1970-01-01T00:01:30Z"}  # 10 s of clock slack
    qid = query.get("queryid")

    def result(nick: str, cseq: int, ts: float) -> str:
        return (
            f"<message {CLIENT} from='{ROOM}'><result xmlns='urn:xmpp:mam:2' queryid='{qid}' id='a{cseq}'>"
            "<forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2024-01-01T00:00:10Z'/>"
            f"<message {CLIENT} type='groupchat' from='{ROOM}/{nick}'><body>b</body>"
            f"<stamp xmlns='urn:loadgen:stamp' cseq='{cseq}' ts='{ts}'/></message></forwarded></result></message>"
        )

    assert feed(d, result("u2", 1, 50.0)) == []  # archived by an earlier run
    assert feed(d, result("u2", 2, 150.0)) == []
    assert feed(d, result("u3", 9, 151.0)) == []
    [reply] = feed(d, f"<iq {CLIENT} type='result' id='{iq.get('id')}'><fin xmlns='urn:xmpp:mam:2'/></iq>")
    assert reply.request_id == history.request_id
    assert reply.result == HistoryResult(
        "chat-1",
        0,
        (
            Delivery(sender_stream("chat-1", "u2"), 2, "u2", 2, 150.0, 1704067210.0, "b", False),
            Delivery(sender_stream("chat-1", "u3"), 9, "u3", 9, 151.0, 1704067210.0, "b", False),
        ),
    )


def test_the_personal_archive_gives_direct_messages_to_us_only(driver):
    """An inbox query asks our own archive; messages we sent are skipped, and a refusal fails it."""
    history = driver.history(INBOX, 0, 10)
    iq = parse(history.payload)
    assert iq.get("to") is None
    assert iq.find("{urn:xmpp:mam:2}query/{jabber:x:data}x") is None  # no start: the driver knows no run
    qid = iq.find("{urn:xmpp:mam:2}query").get("queryid")

    def result(sender: str, cseq: int) -> str:
        return (
            f"<message {CLIENT}><result xmlns='urn:xmpp:mam:2' queryid='{qid}' id='a'>"
            "<forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2024-01-01T00:00:00Z'/>"
            f"<message {CLIENT} type='chat' from='loadgen-{sender}@localhost/r'><body>b</body>"
            f"<stamp xmlns='urn:loadgen:stamp' cseq='{cseq}' ts='5.0'/></message></forwarded></result></message>"
        )

    feed(driver, result("u1", 1))
    feed(driver, result("u4", 3))
    [reply] = feed(driver, f"<iq {CLIENT} type='result' id='{iq.get('id')}'/>")
    assert [(d.stream, d.seq, d.direct) for d in reply.result.deliveries] == [(sender_stream(INBOX, "u4"), 3, True)]
    again = driver.history(INBOX, 0, 10)
    error = "<error type='cancel'><feature-not-implemented xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
    [failure] = feed(driver, f"<iq {CLIENT} type='error' id='{parse(again.payload).get('id')}'>{error}</iq>")
    assert failure == Failure(again.request_id, "feature-not-implemented", "")


def test_logout_is_answered_by_the_reflected_unavailable_presence(driver):
    """Unavailable presence leaves every room; the server's copy back to us answers the logout."""
    logout = driver.logout()
    presence = parse(logout.payload)
    assert presence.get("type") == "unavailable" and presence.get("to") is None
    [reply] = feed(driver, f"<presence {CLIENT} type='unavailable' from='{JID}' id='{presence.get('id')}'/>")
    assert reply == Reply(logout.request_id, LogoutResult({}, 0))


def test_bounces_fail_the_send_they_belong_to_or_no_request(driver):
    """An error for our groupchat fails that send; one for a direct message is reported without a request."""
    joined(driver)
    send = driver.send("chat-1", 1, 1.0, "x")
    error = "<error type='cancel'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
    [failure] = feed(driver, f"<message {CLIENT} type='error' id='lg.1.chat-1' from='{ROOM}'>{error}</message>")
    assert failure == Failure(send.request_id, "not-acceptable", "")
    gone = "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
    [failure] = feed(
        driver, f"<message {CLIENT} type='error' id='lg.1.@u9' from='loadgen-u9@localhost'>{gone}</message>"
    )
    assert (failure.request_id, failure.code) == (None, "service-unavailable")


def test_requests_from_the_server_are_answered(driver):
    """A ping gets its result and any other get or set a service-unavailable error."""
    assert feed(driver, f"<iq {CLIENT} type='get' id='p1' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>") == []
    [pong] = sent(driver)
    assert (pong.get("type"), pong.get("id"), pong.get("to")) == ("result", "p1", "localhost")
    feed(driver, f"<iq {CLIENT} type='get' id='v1' from='x@localhost/y'><query xmlns='jabber:iq:version'/></iq>")
    [refusal] = sent(driver)
    assert refusal.get("type") == "error"
    assert refusal.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}service-unavailable") is not None


@pytest.mark.parametrize(
    "frame",
    [
        b"<message xmlns='jabber:client'",
        b"\xff\xfe not xml",
        b"<a/><b/>",
        b"",
        b"<unknown xmlns='urn:example'/>",
        b"<message xmlns='jabber:client' type='groupchat' from='r@conference.localhost/u2'>"
        b"<stamp xmlns='urn:loadgen:stamp' cseq='x' ts='1'/></message>",
        b"<message xmlns='jabber:client' type='chat' from='u2@localhost'><received xmlns='urn:xmpp:receipts' id='?'/>"
        b"</message>",
        b"<iq xmlns='jabber:client' type='result' id='nobody-asked'/>",
    ],
    ids=["truncated", "not-utf8", "two-elements", "empty", "unknown", "bad-stamp", "foreign-receipt", "unknown-iq"],
)
def test_frames_it_cannot_read_are_malformed_never_raised(driver, frame):
    """Anything the driver cannot make sense of becomes one Malformed event."""
    [event] = driver.receive(frame, False)
    assert isinstance(event, Malformed), event


def test_binary_frames_are_malformed(driver):
    """XMPP over WebSocket is text; a binary frame is reported, not read."""
    [event] = driver.receive(b"<presence xmlns='jabber:client'/>", True)
    assert isinstance(event, Malformed)


@pytest.mark.parametrize(
    "frame",
    [
        b'<!DOCTYPE lol [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        + b"".join(b'<!ENTITY %c "%s">' % (ord("c") + i, b"&%c;" % (ord("b") + i) * 10) for i in range(20))
        + b"]><message xmlns='jabber:client'><body>&v;</body></message>",
        b'<!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]><message xmlns="jabber:client">&x;</message>',
        b"<message xmlns='jabber:client'><body>&undeclared;</body></message>",
        b"<?xml-stylesheet href='x'?><message xmlns='jabber:client'/>",
        b"<message xmlns='jabber:client'><!-- c --></message>",
    ],
    ids=["billion-laughs", "external-entity", "undeclared-entity", "processing-instruction", "comment"],
)
def test_entities_dtds_and_what_rfc_6120_forbids_are_refused_before_expansion(driver, frame):
    """No entity is ever declared or expanded: a DTD, PI or comment makes the frame malformed at once."""
    started = time.perf_counter()
    [event] = driver.receive(frame, False)
    assert isinstance(event, Malformed), event
    assert time.perf_counter() - started < 0.5


def test_names_are_escaped_into_jids_and_back(driver):
    """Room and user names that JIDs cannot hold travel XEP-0106-escaped and decode to themselves."""
    join = driver.join("team room@1")
    assert parse(join.payload).get("to") == "team\\20room\\401@conference.localhost/u1"
    dm = driver.direct("a/b", 1, 1.0, "x")
    assert parse(dm.payload).get("to") == "loadgen-a\\2fb@localhost"
    frame = (
        f"<message {CLIENT} type='chat' from='loadgen-a\\2fb@localhost/r'><body>x</body>"
        "<stamp xmlns='urn:loadgen:stamp' cseq='1' ts='1'/></message>"
    )
    [delivery] = feed(driver, frame)
    assert delivery.sender == "a/b"


def test_what_xmpp_cannot_express_is_declared_and_refused():
    """No seats, gifts, calls or clock: left out of supports, and asking raises Unsupported."""
    supports = XmppDriver.supports
    assert {"msg.send", "dm.send", "msg.read", "history.fetch", "room.join"} <= supports
    assert not {"seat.take", "gift", "danmaku", "cohost.request", "pk.invite", "call.invite", "clock.sync"} & supports
    assert XmppDriver.sender_sequenced and XmppDriver.subprotocols == ("xmpp",)
    d = XmppDriver()
    with pytest.raises(Unsupported):
        d.clock(0.0)
    with pytest.raises(Unsupported):
        d.room_op("seat.take", "r", 0.0, seat=1)
    with pytest.raises(Unsupported):
        d.join_room("r", seats=8)


def test_a_room_bouncing_our_unavailable_presence_does_not_fail_the_logout(driver):
    """A room that no longer knows us answers the logout's presence with an error; the logout still succeeds."""
    logout = driver.logout()
    presence_id = parse(logout.payload).get("id")
    bounce = (
        f"<presence {CLIENT} type='error' id='{presence_id}' from='{ROOM}/u1'><error type='cancel'>"
        "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
    )
    assert feed(driver, bounce) == []
    [reply] = feed(driver, f"<presence {CLIENT} type='unavailable' from='{JID}' id='{presence_id}'/>")
    assert reply == Reply(logout.request_id, LogoutResult({}, 0))
