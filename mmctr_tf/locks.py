"""One exclusive lock per output directory: conversion outputs (`run.make_data`, the synthetic generator) and run
directories (`run.train`, and `run.compare` through it).

The lock of `<parent>/<name>` is the file `<parent>/.<name>.lock` beside it (beside, not inside: a conversion
replaces its output directory as a whole). It is created atomically (`os.open(O_CREAT | O_EXCL)`) and holds the
holder's pid, host, process start time and purpose as JSON. Taking a held lock:

  * holder alive (same host, the pid runs and started when the lock says): refused with `LockHeld`, whose message
    names the pid, the host, the purpose and the lock file;
  * holder dead (same host, no such pid, or the pid was reused by a later process): the stale lock is taken over.
    Breaking it is serialised by a second O_EXCL file (`<lock>.break`), under which the lock is read again, so
    two processes that both find it stale cannot remove a lock that one of them has just taken;
  * holder on another host (a shared file system): its liveness cannot be checked, so it is refused, and the
    message says to delete the lock file if that process is gone.

Locks are re-entrant within one process (a conversion locks its output before reading the raw files, and the
staging of that output locks it again). No TensorFlow here: commands take locks before importing it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Optional

BREAK_TIMEOUT_S = 30.0  # a `.break` file older than this was left by a process that died while breaking a lock
_HELD = {}  # lock path -> depth (re-entrant)


class LockHeld(RuntimeError):
    """Another live process holds the lock; the message names it and the lock file."""


def lock_path(target: str) -> str:
    """`<parent>/.<name>.lock` for the directory `<parent>/<name>`."""
    target = os.path.abspath(target)
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.lock")


def _proc_stat(pid: int):
    """(state, start time in clock ticks since boot) of a process from Linux /proc (the start time tells a reused
    pid); (None, None) elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None, None


def _start_time(pid: int) -> Optional[str]:
    return _proc_stat(pid)[1]


def _alive(holder: dict) -> Optional[bool]:
    """True / False for a holder on this host; None when it runs on another host (cannot be checked)."""
    if holder.get("host") != socket.gethostname():
        return None
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    state, now_started = _proc_stat(pid)
    started = holder.get("started")
    return state != "Z" and not (started and now_started not in (None, started))  # a zombie has exited


def _read(path: str) -> Optional[dict]:
    """The holder recorded in a lock file; None when there is no file, {} when it cannot be parsed."""
    try:
        with open(path) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "an unreadable lock file"
    return (f"{holder.get('what') or 'a process'} (pid {holder.get('pid')} on {holder.get('host')}, since "
            f"{holder.get('since', '?')})")


def _break_stale(path: str, seen: dict) -> bool:
    """Removes the lock file if it still holds `seen` (a dead holder); False when it did not (another process is
    breaking it, or has taken the lock meanwhile)."""
    breaker = path + ".break"
    try:
        fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            if time.time() - os.path.getmtime(breaker) > BREAK_TIMEOUT_S:
                os.remove(breaker)
        except OSError:
            pass
        return False
    os.close(fd)
    try:
        stale = _read(path) == seen
        if stale:
            os.remove(path)
    finally:
        os.remove(breaker)
    return stale


def _acquire(path: str, what: str, log) -> None:
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid()), "what": what,
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    target = os.path.join(os.path.dirname(path), os.path.basename(path)[1:-len(".lock")])
    for _ in range(50):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:  # released meanwhile
                continue
            if holder:
                alive = _alive(holder)
            else:  # being written by its taker (a few microseconds), or garbage left by a crash
                try:
                    alive = time.time() - os.path.getmtime(path) < BREAK_TIMEOUT_S
                except OSError:
                    continue
                if alive:
                    raise LockHeld(f"{target} is being taken by another process (its lock {path} is not written "
                                   f"yet); if none is running, delete the lock file")
                alive = False
            if alive is False:
                if _break_stale(path, holder):
                    log(f"[lock] {target}: took over the lock of {_describe(holder)}, which is no longer running")
                else:
                    time.sleep(0.05)
                continue
            if alive is None:
                raise LockHeld(f"{target} is in use by {_describe(holder)}, on another host; if that process is "
                               f"gone, delete {path}")
            raise LockHeld(f"{target} is in use by {_describe(holder)}; wait for it to finish (lock {path})")
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return
    raise LockHeld(f"{target}: could not take the lock {path} (it kept changing hands)")


@contextlib.contextmanager
def hold(target: str, what: str, log=print):
    """Holds the lock of the directory `target` for the `with` block; `what` says who holds it (shown to a refused
    process). The lock file is created beside `target`, and so are the missing parent folders, which are removed
    again at the end when nothing else was put into them. Raises `LockHeld`."""
    path = lock_path(target)
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield path
        finally:
            _HELD[path] -= 1
        return
    created = []  # parent folders made for the lock file, removed again when left empty
    d = os.path.dirname(path)
    while not os.path.isdir(d):
        created.append(d)
        d = os.path.dirname(d)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        _acquire(path, what, log)
        _HELD[path] = 1
        try:
            yield path
        finally:
            del _HELD[path]
            if (_read(path) or {}).get("pid") == os.getpid():
                os.remove(path)
    finally:
        for d in created:
            try:
                os.rmdir(d)
            except OSError:
                break
