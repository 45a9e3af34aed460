"""mmctr_tf/locks.py: who holds a lock, and when a lock file left behind is taken over (the end-to-end cases, a
second conversion or training refused and a SIGKILLed holder's lock taken over, are in test_converters.py and
test_reliability.py)."""

import json
import os
import socket
import time

import pytest

from mmctr_tf import locks


def _write(path, holder):
    with open(path, "w") as f:
        f.write(holder if isinstance(holder, str) else json.dumps(holder))


def test_lock_file_beside_the_directory_reentrant_and_removed(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    path = locks.lock_path(str(target))
    assert path == str(tmp_path / "a" / "b" / ".out.lock")
    with locks.hold(str(target), "outer") as held:
        holder = json.load(open(held))
        assert (holder["pid"], holder["host"], holder["what"]) == (os.getpid(), socket.gethostname(), "outer")
        assert holder["started"] == locks._start_time(os.getpid())
        with locks.hold(str(target) + "/", "inner"):  # the same directory again, in this process
            assert json.load(open(path))["what"] == "outer"
        assert os.path.exists(path)
    assert not os.path.exists(path) and not (tmp_path / "a").exists()  # folders made for the lock are removed


def test_which_lock_files_are_taken_over(tmp_path):
    """A live holder refuses; a dead pid, a pid reused by a later process (other start time) and an unreadable file
    older than BREAK_TIMEOUT_S are taken over; a holder on another host refuses with the file to delete."""
    target = str(tmp_path / "out")
    path = locks.lock_path(target)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": locks._start_time(os.getpid()),
          "what": "a live one", "since": "today"}
    _write(path, {**me, "pid": 1 if os.getpid() != 1 else 2, "started": None})  # init: alive, start not recorded
    with pytest.raises(locks.LockHeld, match=r"is in use by a live one \(pid [12] on .*wait for it to finish"):
        with locks.hold(target, "me"):
            pass
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    for stale in ({**me, "pid": dead}, {**me, "started": "1"}):
        _write(path, stale)
        logs = []
        with locks.hold(target, "me", log=logs.append):
            assert json.load(open(path))["what"] == "me"
        assert logs == [f"[lock] {target}: took over the lock of a live one (pid {stale['pid']} on "
                        f"{socket.gethostname()}, since today), which is no longer running"]
    _write(path, "")  # a crash between creating the file and writing it
    with pytest.raises(locks.LockHeld, match="is being taken by another process"):  # young: being written
        with locks.hold(target, "me"):
            pass
    old = time.time() - locks.BREAK_TIMEOUT_S - 1
    os.utime(path, (old, old))
    with locks.hold(target, "me", log=lambda *a: None):
        pass
    _write(path, {**me, "host": "elsewhere"})
    with pytest.raises(locks.LockHeld, match=f"on elsewhere, since today\\), on another host; if that process is "
                                             f"gone, delete {path}"):
        with locks.hold(target, "me"):
            pass
    assert json.load(open(path))["host"] == "elsewhere"  # a refused process leaves the holder's file alone
