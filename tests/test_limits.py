"""The sliding window's steps, as one process takes them and as another repeats them
(services/peers.py passes them between the processes of a server)."""

from __future__ import annotations

from chatd.limits import Window


def test_every_step_is_shared_and_a_remote_step_is_not_shared_again() -> None:
    here, there = Window(2, 60), Window(2, 60)
    sent: list[tuple[str, object]] = []
    here.share = lambda op, key: sent.append((op, key))
    echoed: list[tuple[str, object]] = []
    there.share = lambda op, key: echoed.append((op, key))
    here.hit("alice")
    here.hit("alice")
    assert here.blocked("alice") > 0 and sent == [("hit", "alice"), ("hit", "alice")]
    for op, key in sent:
        there.remote(op, key)
    assert there.blocked("alice") > 0, "two hits elsewhere fill this window too"
    here.forget_last("alice")
    there.remote(*sent[-1])
    assert sent[-1] == ("forget_last", "alice") and here.blocked("alice") == 0 and there.blocked("alice") == 0
    here.hit(7)
    here.clear(7)
    for op, key in sent[-2:]:
        there.remote(op, key)
    assert sent[-2:] == [("hit", 7), ("clear", 7)] and there.blocked(7) == 0
    assert echoed == [], "a step repeated from another process is not sent on again"
