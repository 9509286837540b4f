"""The nodes' /diagnostics helpers: a level that reflects the recent window and recovers."""
from mvs_depth_ros.ros.diagnostics import RecentProblems


def test_recent_problems_level_recovers_and_names_the_main_problem():
    w = RecentProblems(window=5.0)
    assert w.summary(now=100.0) == (0, "")
    for i in range(3):
        w.note("tf_reject", f"/tf: transform 'odom' -> 'camera' rejected: stamp {i} too far ahead", t=100.0 + i)
    w.note("encoding", "image rejected: encoding '32FC1' is not a colour input", t=101.5)
    level, msg = w.summary(now=103.0)
    assert level == 1
    # the most frequent recent problem first, with its latest text
    assert msg.index("3x /tf: transform 'odom' -> 'camera' rejected: stamp 2") < msg.index("1x image rejected")
    w.note("worker", "RuntimeError: boom", level=2, t=103.5)
    level, msg = w.summary(now=104.0)
    assert level == 2 and msg.split(": ", 1)[1].startswith("1x RuntimeError")   # errors before warnings
    # six seconds of good input later: OK again, nothing left in the message
    assert w.summary(now=109.6) == (0, "")
    w.note("encoding", "again", t=110.0)
    assert w.summary(now=110.0) == (1, "last 5s: 1x again")


def test_recent_problems_is_bounded():
    w = RecentProblems(window=1e9, max_events=100)
    for i in range(10000):
        w.note(f"k{i % 7}", "x", t=float(i))
    assert len(w._events) == 100 and len(w._text) == 7
