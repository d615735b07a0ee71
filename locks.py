"""One writer per folder: an exclusive lock on <folder>/.lock, held for the life of the process.

train.py holds its work dir's, zoo.py its root's. The lock is a kernel flock on an open file, so it is
released when the holder ends however it ends (kill -9 included): a stale lock cannot exist, and the
file itself (which names the holder's pid) stays in the folder. A second holder gets a ConfigError that
names the folder and the pid holding it.
"""
import os

from errors import ConfigError

try:
    import fcntl
except ImportError:  # not a POSIX system: no locking (the one-writer rule is then the user's)
    fcntl = None

LOCK_FILE = ".lock"
_HELD = {}  # real path of a folder -> the open lock file this process holds (closing it would release the lock)


def _read_holder(f):
    """(pid, what) written in an open lock file by its holder; pid 0 when not (yet) written."""
    f.seek(0)
    pid, _, what = f.read().strip().partition(" ")
    return (int(pid) if pid.isdigit() else 0), what


def hold(folder, what, elsewhere="use another folder"):
    """Take the lock of `folder` (created if missing) for the rest of this process, writing this pid and
    `what` (e.g. 'train.py') into it; a no-op when this process already holds it. ConfigError naming
    the folder and the holder's pid when another process holds it, ending with `elsewhere`."""
    key = os.path.realpath(folder)
    if key in _HELD or fcntl is None:
        return
    os.makedirs(folder, exist_ok=True)
    f = open(os.path.join(folder, LOCK_FILE), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: another process holds it
        pid, who = _read_holder(f)
        f.close()
        holder = f"pid {pid}{', ' + who if who else ''}" if pid else "a process that is just starting"
        stop = f"stop it (kill {pid}), " if pid else ""
        raise ConfigError(f"{folder} is in use by another run ({holder}); wait for it to end, {stop}or "
                          f"{elsewhere}") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()} {what}\n")
    f.flush()
    _HELD[key] = f


def holder(folder):
    """Pid of the process holding the lock of `folder` (0 if it has not written it yet), or None when the
    lock is free (or this process holds it)."""
    path = os.path.join(folder, LOCK_FILE)
    if fcntl is None or os.path.realpath(folder) in _HELD or not os.path.exists(path):
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return _read_holder(f)[0]
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def release(folder):
    """Give up the lock of `folder` if this process holds it (a process that ends releases it anyway)."""
    f = _HELD.pop(os.path.realpath(folder), None)
    if f is not None:
        f.close()
