"""Whether a file of compiled code could have been written by someone other than the user.

Why: loading a saved compiled block unpickles code (torch.compiler.load_compiled_function), so whoever can write
the file can run code as the user. The default cache folder is the user's own, but ``$WORKBENCH_CACHE`` or
``$TORCHINDUCTOR_CACHE_DIR`` may point at a shared place. The rule is ssh's for its keys: the file and each
folder from the store's root down to it belong to the user, are not symbolic links, and are not writable by
group or others. Folders the workbench makes for such files are made 0700, files 0600.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_FOLDER = 0o700


def why_untrusted(path: Path, root: Path) -> str | None:
    """The reason another user could have written ``path`` (a file or folder at or under ``root``), or None.
    Paths that do not exist yet are skipped (they are made private when written)."""
    if not hasattr(os, "getuid"):  # Windows: access is by ACLs, not modes; the user's profile folder is private
        return None
    parts = path.relative_to(root).parts
    uid = os.getuid()
    for p in [root, *(root.joinpath(*parts[:i + 1]) for i in range(len(parts)))]:
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return f"{p} is a symbolic link"
        if st.st_uid != uid:
            return f"{p} belongs to user id {st.st_uid}, not to you ({uid})"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"{p} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}); chmod go-w it"
    return None
