"""Voice rooms (语聊房): hosts run their rooms, hoppers contend for mic seats, others gift, chat and listen."""

from __future__ import annotations

from loadgen.drivers.base import Invitation
from loadgen.scenarios.base import Activity, PostToRoom
from loadgen.scenarios.rooms import ChangeSettings, MoveRoom, RoomMember, SendDanmaku, SendGift


class HopSeat(Activity):
    """Try a seat (occupied or not: contention is the point), hold it for a drawn time, get up."""

    storm = "seat_churn"
    needs = ("seat.take", "seat.leave")
    broadcast = True

    def __call__(self, user: VoiceRoomUser, intended: float) -> None:
        if user.view.my_seat is not None:
            return
        if user.take_seat(seat=user.rng.randrange(user.knobs.seats)):
            user.release_seat_later(user.knobs.hold_mean)


class RunRoom(Activity):
    """The host's hand on the room: lock or unlock a seat, mute or kick a speaker, invite a listener up.

    Each turn picks one of the moves the driver can make: on a backend with mute and kick but
    no locks or invitations, the host still mutes and kicks.
    """

    #: move -> how often a host makes it, relative to the others
    MOVES = {"seat.lock": 0.3, "seat.mute": 0.2, "seat.kick": 0.15, "seat.invite": 0.35}
    needs = ()

    def __call__(self, user: VoiceRoomUser, intended: float) -> None:
        moves = [op for op in self.MOVES if user.run_context.driver_does(op)]
        if not moves:
            return
        view, rng, session = user.view, user.rng, user.session
        ts = user.now()
        [move] = rng.choices(moves, [self.MOVES[op] for op in moves])
        speakers = [seat for seat in view.seats if seat.user is not None and seat.user != user.user_id]
        if move == "seat.lock":
            locked = [seat.n for seat in view.seats if seat.locked]
            # unlocking twice as often as locking keeps most seats open
            if locked and rng.random() < 2 / 3:
                session.room_op("seat.lock", user.room, ts, seat=rng.choice(locked), locked=False)
            else:
                session.room_op("seat.lock", user.room, ts, seat=rng.randrange(len(view.seats)), locked=True)
        elif move == "seat.mute" and speakers:
            seat = rng.choice(speakers)
            session.room_op("seat.mute", user.room, ts, seat=seat.n, muted=not seat.muted)
        elif move == "seat.kick" and speakers:
            session.room_op("seat.kick", user.room, ts, seat=rng.choice(speakers).n)
        elif move == "seat.invite":
            free = view.free_seats()
            listeners = sorted(user.run_context.members(user.room) - set(view.seated_users) - {user.user_id})
            if free and listeners:
                session.room_op("seat.invite", user.room, ts, seat=rng.choice(free), user=rng.choice(listeners))


class VoiceRoomUser(RoomMember):
    """Host, seat hopper, gifter, danmaku chatter or listener of a voice room, by the profile."""

    scenario = "voiceroom"
    core = ("seat.take",)

    def role_shares(self) -> dict[str, float]:
        knobs = self.knobs
        return {"hopper": knobs.hopper_share, "gifter": knobs.gifter_share, "chatter": knobs.chatter_share}

    def seats_per_room(self) -> int:
        return self.knobs.seats

    def activities(self) -> list[Activity]:
        knobs = self.knobs
        settings = ChangeSettings(knobs.settings_rate)
        if self.is_host:
            return [RunRoom(knobs.host_rate), settings]
        by_role = {
            "hopper": [HopSeat(knobs.seat_rate)],
            "gifter": [SendGift(knobs.gift_rate, knobs.gift_value, knobs.combo_max)],
            "chatter": [SendDanmaku(knobs.danmaku_rate)],
            "listener": [],
        }
        chat = PostToRoom(knobs.chat_rate, 32)
        return [*by_role[self.role], chat, settings, MoveRoom(1 / knobs.session_mean)]

    def on_invitation(self, invitation: Invitation) -> None:
        """Invited to a seat: go up, hold it a while like any speaker."""
        if invitation.kind != "seat_invite" or invitation.room != self.room or self.view.my_seat is not None:
            return
        if self.take_seat("seat.accept", seat=invitation.fields["seat"]):
            self.release_seat_later(self.knobs.hold_mean)
