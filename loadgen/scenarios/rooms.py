"""What members of rooms with seats do, for voice rooms and live streams alike.

A :class:`RoomMember` gets a room and a role from the population model when it starts:
the first ``rooms`` users host room 0, 1, 2 …; everyone else lands in a room drawn from
the Zipf law and gets a role by the profile's shares. The role decides which activities
it composes; the activities below are shared by both scenarios.
"""

from __future__ import annotations

import time

import gevent
import gevent.event

from loadgen.population import Zipf, draw_role, user_random
from loadgen.rooms import Checks, RoomView
from loadgen.scenarios.base import Activity, RealtimeUser
from loadgen.scenarios.media import UserMedia
from loadgen.session import OperationFailed, OperationTimeout, Session
from loadgen.transport import TransportError


class RoomMember(RealtimeUser):
    """A member of one room with seats; subclasses name their scenario and role mix."""

    abstract = True
    #: the profile section and the room id prefix
    scenario = ""
    host_role = "host"

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.knobs = getattr(self.run_context.profile, self.scenario)
        self.population = self.run_context.shared(
            f"{self.scenario}.zipf", lambda: Zipf(self.knobs.rooms, self.knobs.zipf_s)
        )
        worker = self.run_context.worker_index
        self.rng = user_random(self.scenario, self.index, worker)
        # one host per room: in a distributed run the first worker's first users host them
        if self.index < self.knobs.rooms and not worker:
            self.role = self.host_role
            self.rank = self.index
        else:
            self.role = draw_role(self.rng, self.role_shares(), "listener")
            self.rank = self.population.draw(self.rng)
        self._seated = gevent.event.Event()
        #: when this user last asked for a seat (the backend's clock): where its stream's first-audio time starts
        self._seat_asked_at: float | None = None
        #: the user's audio, None when the run carries none (no ``media:`` section) or the driver has none
        self.media = UserMedia.for_user(self)

    def role_shares(self) -> dict[str, float]:
        return {}

    @property
    def is_host(self) -> bool:
        return self.role == self.host_role

    @property
    def room(self) -> str:
        return self.rooms[0]

    @property
    def view(self) -> RoomView:
        return self.views[self.room]

    def choose_rooms(self) -> list[str]:
        self.hot = self.rank < self.knobs.hot_rooms
        return [f"{self.scenario}-{self.rank}"]

    def seats_per_room(self) -> int:
        raise NotImplementedError

    @property
    def carries_media(self) -> bool:
        """Whether this user's room carries audio: the profile's most popular rooms do."""
        return self.media is not None and self.rank < self.media.plane.run.profile.rooms

    def enter(self, session: Session, room: str) -> None:
        run = self.run_context
        checks = Checks(run.violation, run.accounting.record_fanout, run.accounting.now)
        self.views[room] = RoomView(self.user_id, room, checks, on_seated=self._on_seated)
        joining_at = self.now()
        session.join_room(room, seats=self.seats_per_room(), as_host=self.is_host)
        run.members(room).add(self.user_id)
        if self.carries_media:
            try:
                self.media.open(session, room, joining_at)
            except (OperationFailed, TransportError):
                # in Locust's table already; the user stays in the room, without audio
                return
            if self.is_host:
                self.media.start_speaking(joining_at, self.now())

    def may_speak(self) -> bool:
        """Whether the backend would relay this user's audio now: a host, or on a seat of its room."""
        if not self.connected or not self.rooms:
            return False
        view = self.views.get(self.room)
        return view is not None and (self.is_host or view.my_seat is not None)

    def _on_seated(self, seat: int, how: str) -> None:
        """In the reader greenlet: this user appeared on a seat."""
        self._seated.set()
        if self.media is not None and self.media.session is not None:
            now = self.now()
            asked = self._seat_asked_at if how in ("take", "accept") and self._seat_asked_at is not None else now
            self.media.start_speaking(asked, now)
        if how == "cohost":
            self.react(self.on_stage)

    def _on_closed(self, code: int | None) -> None:
        if self.media is not None:
            self.media.close(self.now())
        super()._on_closed(code)

    def on_stage(self) -> None:
        """Put on stage by the host (连麦); live streams hold it a while."""

    def leave_room(self) -> None:
        room = self.room
        if self.media is not None:
            self.media.close(self.now())
        self.run_context.members(room).discard(self.user_id)
        self.session.leave(room)
        del self.views[room]

    def on_stop(self) -> None:
        for room in self.rooms:
            self.run_context.members(room).discard(self.user_id)
        if self.media is not None:
            self.media.close(self.now())
        super().on_stop()

    def now(self) -> float:
        """The backend's time as this generator knows it: what every request's ``ts`` carries."""
        return self.run_context.accounting.now()

    def take_seat(self, op: str = "seat.take", **fields: object) -> bool:
        """Take a seat and time it until this user sees itself seated in a snapshot.

        Returns False when the backend refused (a lost race is an outcome, counted as such).
        """
        self._seated.clear()
        self._seat_asked_at = self.now()
        started = time.perf_counter()
        self.session.room_op(op, self.room, self.now(), report=False, **fields)
        seen = self._seated.wait(self.run_context.request_timeout)
        elapsed = time.perf_counter() - started
        error = None if seen else OperationTimeout(op, self.run_context.request_timeout)
        self.run_context.report(op, elapsed, error)
        return seen

    def release_seat_later(self, hold_mean: float, op: str = "seat.leave") -> None:
        hold = self.rng.expovariate(1 / hold_mean) / self.storm_multiplier("seat_churn")
        gevent.spawn_later(hold, self.react, lambda: self._release(op))

    def _release(self, op: str) -> None:
        if self.rooms and self.view.my_seat is not None:
            self.session.room_op(op, self.room, self.now())


class SendGift(Activity):
    storm = "gift"
    needs = ("gift",)
    broadcast = True

    def __init__(self, rate: float, value: int, combo_max: int) -> None:
        super().__init__(rate)
        self.value = value
        self.combo_max = combo_max

    def __call__(self, user: RoomMember, intended: float) -> None:
        count = user.rng.randint(1, self.combo_max)
        gift = "rose" if self.value < 100 else "rocket"
        user.session.room_op("gift", user.room, intended + user.run_context.accounting.clock_offset,
                             gift=gift, count=count, value=self.value)  # fmt: skip


class SendDanmaku(Activity):
    storm = "gift"
    needs = ("danmaku",)
    broadcast = True

    def __call__(self, user: RoomMember, intended: float) -> None:
        user.session.room_op("danmaku", user.room, intended + user.run_context.accounting.clock_offset, text="666")


class MoveRoom(Activity):
    """End the visit to this room and go to another one drawn from the population."""

    needs = ("room.leave",)

    def __call__(self, user: RoomMember, intended: float) -> None:
        user.leave_room()
        user.rank = user.population.draw(user.rng)
        user.rooms = user.choose_rooms()
        user.enter(user.session, user.room)


class ChangeSettings(Activity):
    """A seated user switches its voice effect, or (now and then) the background music."""

    needs = ("settings",)
    broadcast = True
    EFFECTS = ("none", "ktv", "hall", "robot", "child")

    def __call__(self, user: RoomMember, intended: float) -> None:
        if user.view.my_seat is None and not user.is_host:
            return
        if user.rng.random() < 0.8:
            user.session.room_op("settings", user.room, user.now(), effect=user.rng.choice(self.EFFECTS))
        else:
            track = f"track-{user.rng.randrange(20)}"
            user.session.room_op("settings", user.room, user.now(), bgm={"on": user.rng.random() < 0.7, "track": track})
