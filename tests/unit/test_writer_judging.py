"""The checker's judgement of acknowledged commits: what counts as two primaries."""

from __future__ import annotations

from pgwarden.lab.writer import Ack, Writer


def judged(acks: list[Ack]) -> list[tuple[str, str]]:
    writer = Writer(["a", "b"], conninfo=lambda name: "")
    writer.acks = acks
    return writer.split_brain()


def steady(member: str, start: float, end: float, first_id: int = 0) -> list[Ack]:
    """A commit every 10 ms, each acknowledged 2 ms after it was sent."""
    acks, t, i = [], start, first_id
    while t < end:
        acks.append(Ack(i, member, t, t + 0.002))
        t, i = t + 0.01, i + 1
    return acks


def test_a_clean_failover_is_not_split_brain() -> None:
    assert judged(steady("a", 0, 10) + steady("b", 14, 20, 10_000)) == []


def test_a_failback_later_is_not_split_brain() -> None:
    acks = steady("a", 0, 10) + steady("b", 14, 20, 10_000) + steady("a", 25, 30, 20_000)
    assert judged(acks) == []


def test_two_members_taking_new_writes_together_is_split_brain() -> None:
    assert judged(steady("a", 0, 10) + steady("b", 5, 15, 10_000)) == [("a", "b")]


def test_a_commit_in_flight_during_a_freeze_acknowledged_on_thaw_is_not() -> None:
    # a is frozen at t=10 with one commit in flight; b takes over at 14; a thaws at 14.05
    # and acknowledges the commit it received before the freeze, then is fenced.
    late = Ack(999, "a", sent=9.995, acked=14.05)
    assert judged([*steady("a", 0, 9.99), late, *steady("b", 14, 20, 10_000)]) == []


def test_a_new_commit_accepted_by_the_old_primary_after_takeover_is() -> None:
    late = Ack(999, "a", sent=14.03, acked=14.05)
    assert judged([*steady("a", 0, 9.99), late, *steady("b", 14, 20, 10_000)]) == [("a", "b")]
