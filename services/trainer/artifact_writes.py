"""Writing a run's artifacts beside their place, so that a failed write leaves nothing behind, and a
full volume is named as such (torch.save on a full disk says only "unexpected pos 219200 vs 219152")."""

from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOW_SPACE_BYTES = 1 << 20  # a write that failed with less than this free failed for want of space


class ArtifactVolumeFull(OSError):
    pass


def free_bytes(path: Path) -> int | None:
    """Free bytes on the volume that holds `path` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def staged(tmp: Path, what: str) -> Iterator[Path]:
    """Write `what` into `tmp` (a file or a directory) inside the block; on failure `tmp` is
    removed, and a failure for want of space is raised as ArtifactVolumeFull naming the volume."""
    try:
        yield tmp
    except (OSError, RuntimeError) as error:
        free = free_bytes(tmp)  # before removing tmp: what the failed write saw
        _remove(tmp)
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < LOW_SPACE_BYTES):
            raise ArtifactVolumeFull(
                errno.ENOSPC, f"No space left on device: {what} did not fit on the artifact volume at {tmp.parent} "
                f"({free} bytes free); free space there or point DSC_MODEL_STORE at a larger volume, then submit the run again",
            ) from error
        raise
