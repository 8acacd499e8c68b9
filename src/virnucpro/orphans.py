"""Leftovers of interrupted runs: found by their names, removed by the next run.

Every temporary file or directory the package writes is named `.NAME.XXXXXXXX.tmp`
(`tempfile`'s names, in virnucpro.atomic and for partial directories renamed away before
removal) or `.NAME.rows.tmp` (the scratch file of a feature file being assembled). A run
killed while one exists leaves it behind (a 76 MB `.prepare.*.tmp` after a kill during
prepare), and nothing will ever use it: results are published only by renaming their
temporary file. The workflow's onstart hook removes them once it holds the output
directory's lock (virnucpro.runlock), when no other run can be writing there.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

ORPHAN = re.compile(r"\..+\.([a-z0-9_]{8}|rows)\.tmp")
# Not ours to clean, should the output directory be the working directory.
SKIPPED = {".snakemake"}


def _size(path: Path) -> int:
    if not path.is_dir():
        return path.lstat().st_size
    return sum(Path(root, name).lstat().st_size for root, _, names in os.walk(path)
               for name in names)


def remove_orphans(outdir: str | os.PathLike) -> tuple[int, int]:
    """Remove every leftover below `outdir`; return how many and their bytes."""
    count = size = 0
    for root, dirs, files in os.walk(outdir):
        dirs[:] = [d for d in dirs if d not in SKIPPED]
        for name in [*files, *dirs]:
            if not ORPHAN.fullmatch(name):
                continue
            path = Path(root, name)
            size += _size(path)
            count += 1
            if name in dirs:
                shutil.rmtree(path, ignore_errors=True)
                dirs.remove(name)
            else:
                path.unlink(missing_ok=True)
    return count, size
