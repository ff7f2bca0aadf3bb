"""1v1 calls: callers ring callees, callees answer (or decline), the pair talks and hangs up.

Call state arrives as pushes in the reader greenlet; answers and hang-ups are queued as
reactions for the user's own greenlet. ``call.setup`` (invite → connected) and
``call.ring`` (invite → the callee's phone rings) are timed from the invite's stamped time,
on both sides for setup.
"""

from __future__ import annotations

import gevent

from loadgen.drivers.base import CallUpdate
from loadgen.scenarios.base import Activity, RealtimeUser

TERMINAL = frozenset({"rejected", "timeout", "ended"})


class CallParty(RealtimeUser):
    """Anyone who can be in a call: answers rings, times setup, hangs up after talking."""

    abstract = True

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.current_call: str | None = None

    # how this user answers; scenarios set them from their profile section
    answer_probability = 1.0
    answer_delay = 0.0
    talk_mean = 5.0

    def on_call(self, update: CallUpdate) -> None:
        run = self.run_context
        side = "caller" if update.caller == self.user_id else "callee"
        elapsed = run.accounting.now() - update.sent_at
        if update.state == "ringing":
            self.current_call = update.call
            if side == "callee":
                run.accounting.record_fanout("call.ring", elapsed)
                gevent.spawn_later(self.answer_delay, self.react, lambda: self._answer(update.call))
        elif update.state == "connected":
            run.accounting.record_fanout("call.setup", elapsed)
            if side == "caller":
                talk = self.rng.expovariate(1 / self.talk_mean)
                gevent.spawn_later(talk, self.react, lambda: self._hang_up(update.call))
        elif update.state in TERMINAL and self.current_call == update.call:
            self.current_call = None
        run.call_observed(update, side)

    def _answer(self, call: str) -> None:
        if self.current_call != call:
            return
        op = "call.accept" if self.rng.random() < self.answer_probability else "call.reject"
        self.session.call_op(op, self.run_context.accounting.now(), call=call)

    def _hang_up(self, call: str) -> None:
        if self.current_call == call:
            self.session.call_op("call.hangup", self.run_context.accounting.now(), call=call)

    def place_call(self, to: str, **fields: object) -> None:
        if self.current_call is not None or to == self.user_id:
            return
        done = self.session.call_op("call.invite", self.run_context.accounting.now(), to=to, **fields)
        self.current_call = done.call


class PlaceCall(Activity):
    needs = ("call.invite",)

    def __call__(self, user: CallUser, intended: float) -> None:
        callees = user.run_context.shared("call1v1.callees", list)
        if callees:
            user.place_call(callees[user.rng.randrange(len(callees))])


class CallUser(CallParty):
    """A user of a 1v1 social app: a caller or a callee, by the profile's share."""

    core = ("call.invite",)

    def __init__(self, environment) -> None:
        super().__init__(environment)
        knobs = self.run_context.profile.call1v1
        self.knobs = knobs
        self.answer_probability = knobs.answer_probability
        self.answer_delay = knobs.answer_delay
        self.talk_mean = knobs.talk_mean
        self.callee = self.rng.random() < knobs.callee_share

    def on_start(self) -> None:
        super().on_start()
        if self.callee:
            self.run_context.shared("call1v1.callees", list).append(self.user_id)

    def on_stop(self) -> None:
        callees = self.run_context.shared("call1v1.callees", list)
        if self.user_id in callees:
            callees.remove(self.user_id)
        super().on_stop()

    def activities(self) -> list[Activity]:
        return [] if self.callee else [PlaceCall(self.knobs.call_rate)]
