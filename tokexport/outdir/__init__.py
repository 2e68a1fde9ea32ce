"""Output directories: never lose a user's data, never leave a half-written output behind.

Every command that writes a directory (convert, sweep, search, bundle, models fetch) goes through
:func:`claim_out_dir` and :func:`staged_dir`:

* **Checks first** (:func:`check_out_dir`, before any model is loaded): the output may not be ``/``, the
  home directory (or above it), the current directory or one of its parents, a path given with ``..``
  or passing through a symbolic link, a directory that holds a file the run reads (recipe, model,
  ``--from``), anything under /proc or /sys, something that is not a directory, or a name the
  file system cannot hold; its parent must be creatable and writable. Each refusal is one line
  (:class:`~tokexport.errors.InputError`, exit 2) naming the path.
* **Marker**: every output directory carries ``.tokexport-output`` (tool, version, kind, created);
  ``--force`` replaces only a directory that has it.
* **Exclusive claim**: ``flock`` on the sibling ``.NAME.lock`` for the whole run (released by the
  kernel when a process dies); a second run into the same output fails at once.
* **Atomic replacement**: the output is built in ``.NAME.tmp-XXXX/NAME`` (the container also holds
  ``.tokexport-owner``: pid, host, process start); when complete the old output is renamed aside into
  ``.NAME.old-XXXX/``, the new one renamed into place, and only then is the old one deleted (restored
  if the second rename fails). Errors and Ctrl-C remove the container.
* **Stale leftovers** of dead runs (containers whose owner record names a process that no longer
  exists) are removed by the next run into that output once it holds the lock; containers without an
  owner record are only named in a warning.

The package: :mod:`.markers` (the marker, the temporary siblings' tags), :mod:`.checks` (what may not be
written), :mod:`.locks` (``.NAME.lock``), :mod:`.owners` (owner records, stale leftovers) and
:mod:`.claims` (the claim, the staged swap, single files written whole).
"""

from __future__ import annotations

from .checks import check_archive, check_out_dir, check_out_file, checked_force, protect_written
from .claims import Claim, claim_out_dir, claimed, staged_dir, write_file_atomic
from .locks import LOCK_SUFFIX, LOCK_TAG
from .markers import (
    MARKER,
    OLD_TAG,
    TMP_TAG,
    is_bundle_archive,
    is_tokexport_output,
    marker_record,
    read_marker,
    write_marker,
)
from .owners import OWNER, clean_stale

__all__ = [
    "LOCK_SUFFIX",
    "LOCK_TAG",
    "MARKER",
    "OLD_TAG",
    "OWNER",
    "TMP_TAG",
    "Claim",
    "check_archive",
    "check_out_dir",
    "check_out_file",
    "checked_force",
    "claim_out_dir",
    "claimed",
    "clean_stale",
    "is_bundle_archive",
    "is_tokexport_output",
    "marker_record",
    "protect_written",
    "read_marker",
    "staged_dir",
    "write_file_atomic",
    "write_marker",
]
