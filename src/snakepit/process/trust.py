"""What the run registry may trust: directories, records, processes and segments that
belong to this user, and to no one else.

The state dir defaults to a predictable name in the world-writable temp dir, so another
user can make it first, or plant files in it. The registry acts on what it finds there
(it kills process groups and removes shared-memory segments), so each thing is checked
before it is believed:

- the state dir and its folders are created 0700 and must be owned by the effective
  uid and writable by no one else (:func:`secure_dir`);
- a run record counts only when it is a regular file owned by the uid and writable by
  no one else (:func:`read_own_file`);
- a process is killed only when it runs as the uid, real and effective
  (:func:`owns_process`), and carries the dead run's marker in its environment -- a
  start time alone is readable by anyone and proves nothing;
- a shared-memory segment is removed only when the uid owns it
  (:func:`remove_own_segments`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from snakepit.errors import ConfigError
from snakepit.protocol.shm import SEGMENT_DIR

log = logging.getLogger("snakepit.registry")

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def secure_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) if missing, and check that only this user controls it.

    A directory of ours that others may read or enter is tightened to 0700; one that
    others may write, or that belongs to another user, or a symlink, is refused: what
    it holds may have been planted.

    Raises:
        ConfigError: naming the directory and how to fix it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    uid = os.geteuid()
    fix = ("remove it, or point state_dir (or SNAKEPIT_STATE_DIR) at a directory of "
           "your own")
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError([f"state_dir: {path} is a symbolic link; name the real "
                           f"directory instead, or {fix}"])
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError([f"state_dir: {path} is not a directory; {fix}"])
    if info.st_uid != uid:
        raise ConfigError([f"state_dir: {path} belongs to uid {info.st_uid}, not to this "
                           f"user (uid {uid}), who could have planted run records in it; "
                           f"{fix}"])
    if info.st_mode & _OTHERS_WRITE:
        raise ConfigError([f"state_dir: {path} is writable by other users "
                           f"(mode {stat.S_IMODE(info.st_mode):o}), who could have planted "
                           f"run records in it; check what it holds, then chmod 700 it, "
                           f"or {fix}"])
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)  # ours, made with a looser umask: tighten it
    return path


def read_own_file(path: Path) -> bytes | None:
    """The contents of ``path`` if it is a regular file (not a link) that this user
    owns and no one else may write; ``None`` (and a warning) otherwise.

    Raises:
        FileNotFoundError: it is gone.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        log.warning("ignoring registry file %s: %s", path, exc)
        return None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or (
                info.st_mode & _OTHERS_WRITE):
            log.warning("ignoring registry file %s: not a file of this user that only "
                        "this user may write (uid %d, mode %o)", path, info.st_uid,
                        stat.S_IMODE(info.st_mode))
            return None
        return file.read()


def owns_process(pid: int) -> bool:
    """Whether process ``pid`` runs as this user: real and effective uid both ours."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("Uid:"):
            real, effective = (int(value) for value in line.split()[1:3])
            return real == effective == os.geteuid()
    return False


def process_group(pid: int) -> int | None:
    """The process group of ``pid`` (Linux), or None if it is gone."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat_line.rsplit(")", 1)[1].split()[2])


def remove_own_segments(prefix: str, directory: str = SEGMENT_DIR) -> int:
    """Unlink the segments in ``directory`` named ``prefix...`` that this user owns
    (another user's are left, whatever their name says); returns how many."""
    removed, uid = 0, os.geteuid()
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.startswith(prefix):
                continue
            with contextlib.suppress(FileNotFoundError):
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode) and info.st_uid == uid:
                    os.unlink(entry.path)
                    removed += 1
    return removed
