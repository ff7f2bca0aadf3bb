"""Live streams (秀场直播): hosts stream, take co-hosts (连麦) on stage and fight PKs; viewers gift and apply."""

from __future__ import annotations

from loadgen.drivers.base import Invitation
from loadgen.scenarios.base import Activity, PostToRoom
from loadgen.scenarios.calls import CallParty
from loadgen.scenarios.rooms import MoveRoom, RoomMember, SendDanmaku, SendGift
from loadgen.session import Session


class ApplyToCohost(Activity):
    """Ask the host to be taken on stage; the host's answer comes back as a push."""

    needs = ("cohost.request",)

    def __call__(self, user: LiveStreamUser, intended: float) -> None:
        if user.view.my_seat is None and user.view.live:
            user.session.room_op("cohost.request", user.room, user.now())


class InvitePk(Activity):
    """Challenge the host of another live room to a PK."""

    needs = ("pk.invite",)

    def __call__(self, user: LiveStreamUser, intended: float) -> None:
        rooms = user.knobs.rooms
        other = (user.rank + 1 + user.rng.randrange(rooms - 1)) % rooms
        user.session.room_op(
            "pk.invite", user.room, user.now(), target=f"{user.scenario}-{other}", duration=user.knobs.pk_duration
        )


class CallTheHost(Activity):
    """Switch from watching to a 1v1 call with the host."""

    needs = ("call.invite",)

    def __call__(self, user: LiveStreamUser, intended: float) -> None:
        hosts = user.run_context.user_ids
        if user.rank < len(hosts):
            user.place_call(hosts[user.rank], room=user.room)


class LiveStreamUser(RoomMember, CallParty):
    """Host, co-host applicant, gifter, danmaku chatter or viewer of a live room, by the profile."""

    scenario = "livestream"
    core = ("cohost.request", "pk.invite")

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.answer_probability = 1.0
        self.talk_mean = self.knobs.talk_mean

    def role_shares(self) -> dict[str, float]:
        knobs = self.knobs
        return {"applicant": knobs.applicant_share, "gifter": knobs.gifter_share, "chatter": knobs.chatter_share}

    def seats_per_room(self) -> int:
        return self.knobs.stage

    def enter(self, session: Session, room: str) -> None:
        super().enter(session, room)
        if self.is_host:
            session.room_op("stream.start", room, self.now())

    def activities(self) -> list[Activity]:
        knobs = self.knobs
        if self.is_host:
            return [InvitePk(knobs.pk_rate)]
        by_role = {
            "applicant": [ApplyToCohost(knobs.cohost_rate)],
            "gifter": [SendGift(knobs.gift_rate, knobs.gift_value, knobs.combo_max)],
            "chatter": [SendDanmaku(knobs.danmaku_rate)],
            "listener": [],
        }
        chat = PostToRoom(knobs.chat_rate, 32)
        return [*by_role[self.role], chat, CallTheHost(knobs.call_host_rate), MoveRoom(1 / knobs.session_mean)]

    def on_invitation(self, invitation: Invitation) -> None:
        knobs, rng, session = self.knobs, self.rng, self.session
        if invitation.kind == "cohost_request" and self.is_host:
            if rng.random() < knobs.accept_probability:
                # cohost.accept names the time until the co-host is on stage; the host's own
                # request-to-reply time goes by another name so the two never mix
                session.room_op("cohost.accept", self.room, self.now(), name="cohost.approve", user=invitation.sender)
            else:
                session.room_op("cohost.reject", self.room, self.now(), user=invitation.sender)
        elif invitation.kind == "pk_invite" and self.is_host:
            op = "pk.accept" if rng.random() < knobs.pk_accept_probability else "pk.reject"
            session.room_op(op, self.room, self.now(), pk=invitation.fields["pk"])

    def on_stage(self) -> None:
        self.release_seat_later(self.knobs.cohost_hold_mean, op="cohost.leave")
