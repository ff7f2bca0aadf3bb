"""Chat users: post to their rooms, message each other, mark messages read, reconnect now and then."""

from __future__ import annotations

from loadgen.scenarios.base import Activity, MarkRead, PostToRoom, RealtimeUser, Reconnect, SendDirect


class ChatUser(RealtimeUser):
    """A member of a few chat rooms, with rates from the profile's ``messaging`` section."""

    core = ("msg.send", "dm.send")

    def choose_rooms(self) -> list[str]:
        knobs = self.run_context.profile.messaging
        # spread a user's rooms evenly so every room gets members at any user count
        stride = max(knobs.rooms // knobs.rooms_per_user, 1)
        picked = {(self.index + k * stride) % knobs.rooms for k in range(knobs.rooms_per_user)}
        return [f"chat-{n}" for n in sorted(picked)]

    def activities(self) -> list[Activity]:
        knobs = self.run_context.profile.messaging
        return [
            PostToRoom(knobs.post_rate, knobs.body_bytes),
            SendDirect(knobs.dm_rate, knobs.body_bytes),
            MarkRead(knobs.read_rate),
            Reconnect(knobs.reconnect_rate),
        ]
