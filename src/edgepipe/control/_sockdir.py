"""Where control sockets live and whether that place is safe: the default directory, its creation with the
right mode, and who could not reach it. Shared by the server and the client.

>>> default_socket_dir().name.startswith("edgepipe")
True
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Iterable
from pathlib import Path

from edgepipe.errors import UnsafeSocketDirError

__all__: list[str] = []  # default_socket_dir is public through edgepipe.control.server


def default_socket_dir(shared: bool = False) -> Path:
    """``$XDG_RUNTIME_DIR/edgepipe`` when XDG_RUNTIME_DIR names a directory, else ``/tmp/edgepipe-<uid>``.

    With ``shared`` (a server with ``allowed_uids``): ``/tmp/edgepipe-<uid>-shared``, a directory of its own
    that other users can enter (0711), outside XDG_RUNTIME_DIR, which they cannot.
    """
    if shared:
        return Path("/tmp") / f"edgepipe-{os.geteuid()}-shared"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        return Path(xdg) / "edgepipe"
    return Path("/tmp") / f"edgepipe-{os.geteuid()}"


def secure_dir(path: Path, shared: bool) -> None:
    """Create ``path`` (mode 0700, or 0711 when ``shared``: others may enter, not list) if missing; then
    insist it is a real directory of ours that no other user can write to, and (unless ``shared``) that no
    other user can enter."""
    mode = 0o711 if shared else 0o700
    try:
        os.mkdir(path, mode)
        os.chmod(path, mode)  # mkdir's mode went through the umask
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeSocketDirError(f"socket directory {str(path)!r} is a symlink; refusing to follow it")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeSocketDirError(f"socket directory {str(path)!r} is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafeSocketDirError(
            f"socket directory {str(path)!r} belongs to uid {st.st_uid}, not to us (uid {os.geteuid()})")
    mode = stat.S_IMODE(st.st_mode)
    too_open = mode & (0o022 if shared else 0o077)
    if too_open:
        want = "not writable by group or others" if shared else "mode 0700"
        raise UnsafeSocketDirError(f"socket directory {str(path)!r} has mode {mode:04o}; it must be {want}")


def _searchable_by(st: os.stat_result, uid: int, groups: set[int]) -> bool:
    mode = st.st_mode
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(mode & stat.S_IXUSR)
    if st.st_gid in groups:
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)


def unreachable_for(directory: Path, uids: Iterable[int]) -> list[str]:
    """Sentences naming each directory on the way to ``directory`` that an allowed uid cannot search (by
    mode bits and the uid's groups; ACLs are not read, so this warns rather than refuses)."""
    out = []
    for uid in sorted(uids):
        try:
            pw = pwd.getpwuid(uid)
            groups = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
        except KeyError:
            groups = set()
        d = directory
        while True:
            try:
                st = os.stat(d)
            except OSError:
                break
            if not _searchable_by(st, uid, groups):
                out.append(f"uid {uid} cannot search {str(d)!r} (mode {stat.S_IMODE(st.st_mode):04o}, "
                           f"owner {st.st_uid}, group {st.st_gid})")
                break
            if d == d.parent:
                break
            d = d.parent
    return out
