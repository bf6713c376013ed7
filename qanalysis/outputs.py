"""Output folders: a run writes into a staging folder and moves its files into ``--out``
only when it succeeds. Nothing of the user's is ever deleted or overwritten.

The rules, in the order they are checked before any work starts:

* ``--out`` missing, or an empty folder → fine (a missing folder and its missing parents
  are created only when the run succeeds, so a failed run to ``a/b/c`` leaves no ``a/``).
* ``--out`` holds a file that no qanalysis run wrote (not listed in the marker
  ``.qanalysis.json``) → refused, whatever the flags: the user's files are never touched.
* ``--out`` holds only a previous qanalysis run's results → refused unless ``force``;
  with ``force`` they are replaced as a whole when the new run succeeds.

The swap at the end blocks SIGINT/SIGTERM, so an interrupted run leaves either the
complete old results or the complete new ones.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from .errors import OutputError

MARKER = ".qanalysis.json"
_STAGE_PREFIX = ".qanalysis-stage-"
_OLD_PREFIX = ".qanalysis-old-"


def _files_under(root: Path) -> list[str]:
    """Relative paths of every file (and symlink) under ``root``, sorted; the marker excluded."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            rel = os.path.relpath(os.path.join(dirpath, n), root)
            if rel != MARKER:
                found.append(rel)
    return sorted(found)


def read_marker(folder: Path) -> dict | None:
    """The marker of a previous qanalysis run in ``folder``, or None (absent or unreadable)."""
    p = folder / MARKER
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(m, dict) or m.get("tool") != "qanalysis" or not isinstance(m.get("files"), list):
        return None
    return m


def _check_name(path: Path) -> None:
    """Fail early (before the work) on a path the file system will refuse at the end."""
    try:
        limit = os.pathconf(".", "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise OutputError(f"output folder name is too long ({len(os.fsencode(part))} bytes; "
                              f"this file system allows {limit}): {part[:40]}…")  # fmt: skip


def _exists(p: Path) -> bool:
    try:
        return p.exists() or p.is_symlink()
    except OSError as e:
        raise OutputError(f"cannot write to output folder {p}: {e.strerror or e}") from None


@dataclass
class Staging:
    """Where a run writes (``path``); ``commit()`` moves it into ``out``."""

    out: Path
    path: Path
    force: bool
    command: str
    argv: Sequence[str] = ()
    written: list[str] = field(default_factory=list)

    def commit(self) -> list[str]:
        """Move the staged files into ``out``; returns their relative paths."""
        files = _files_under(self.path)
        marker = {
            "tool": "qanalysis",
            "command": self.command,
            "argv": list(self.argv),
            "finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "files": files,
        }
        (self.path / MARKER).write_text(json.dumps(marker, indent=2))
        with _signals_blocked():
            self._swap(files)
        self.written = files
        return files

    def _swap(self, files: list[str]) -> None:
        out = self.out
        if not out.exists():
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                os.rename(self.path, out)  # one atomic step: the folder appears complete
            except OSError as e:
                raise OutputError(f"cannot create output folder {out}: {e.strerror or e}") from None
            return
        # out exists: it was empty or held a previous run's results when we started; check again
        # (another run may have written there meanwhile), then swap file by file.
        previous = _check_existing(out, self.force, self.command)
        old = out / f"{_OLD_PREFIX}{uuid.uuid4().hex[:8]}"
        old.mkdir()
        try:
            for rel in previous + ([MARKER] if previous else []):
                src = out / rel
                if src.exists() or src.is_symlink():
                    (old / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.rename(src, old / rel)
            for rel in files + [MARKER]:
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                os.rename(self.path / rel, out / rel)
        except OSError as e:  # put the old results back, remove what we moved in
            for rel in files + [MARKER]:
                with contextlib.suppress(OSError):
                    if (out / rel).exists() and not (self.path / rel).exists():
                        os.rename(out / rel, self.path / rel)
            for rel in previous + ([MARKER] if previous else []):
                with contextlib.suppress(OSError):
                    os.rename(old / rel, out / rel)
            raise OutputError(f"cannot move results into {out}: {e.strerror or e}") from None
        finally:
            shutil.rmtree(old, ignore_errors=True)
            _remove_empty_dirs(out, previous)
        shutil.rmtree(self.path, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _remove_empty_dirs(out: Path, rels: list[str]) -> None:
    """Sub-folders that held only the previous run's files and are now empty."""
    dirs = sorted({p for r in rels for p in Path(r).parents if str(p) != "."}, key=lambda p: -len(p.parts))
    for d in dirs:
        with contextlib.suppress(OSError):
            (out / d).rmdir()


def _check_existing(out: Path, force: bool, command: str) -> list[str]:
    """The previous run's files in ``out`` (to be replaced), or an OutputError."""
    if not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    try:
        present = _files_under(out)
    except OSError as e:
        raise OutputError(f"cannot read output folder {out}: {e.strerror or e}") from None
    present = [p for p in present if not Path(p).parts[0].startswith((_STAGE_PREFIX, _OLD_PREFIX))]
    marker = read_marker(out)
    ours = set(marker["files"]) if marker else set()
    foreign = [p for p in present if p not in ours]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(f"--out {out} holds files qanalysis did not write ({shown}); "
                          "choose a new or empty folder (qanalysis never overwrites your files)")  # fmt: skip
    if present and not force:
        what = f"a previous 'qanalysis {marker.get('command', '?')}' run" if marker else "a previous run"
        raise OutputError(f"--out {out} holds the results of {what}; pass --force to replace them, or choose a new folder")
    return present


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    sigs = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, ValueError, OSError):  # not the main thread / no such call
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def begin(out: str | Path, *, command: str, force: bool = False, argv: Sequence[str] = ()) -> Staging:
    """Check ``out`` and create the staging folder for a run; nothing in ``out`` changes yet."""
    if str(out).strip() == "":
        raise OutputError("--out is empty: name an output folder")
    out = Path(out)
    _check_name(out)
    if _exists(out):
        _check_existing(out, force, command)
        stage_parent = out
    else:
        stage_parent = out.parent
        while not _exists(stage_parent) and stage_parent != stage_parent.parent:
            stage_parent = stage_parent.parent
        if not stage_parent.is_dir():
            raise OutputError(f"cannot write to output folder {out}: {stage_parent} is not a folder")
    stage = stage_parent / f"{_STAGE_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        stage.mkdir()
    except OSError as e:
        raise OutputError(f"cannot write to output folder {out}: {e.strerror or e}") from None
    return Staging(out=out, path=stage, force=force, command=command, argv=tuple(argv))


@contextlib.contextmanager
def staged(out: str | Path, *, command: str, force: bool = False, argv: Sequence[str] = ()) -> Iterator[Staging]:
    """``with staged(out, command=...) as st: write into st.path``; committed on success,
    discarded on any failure or interruption."""
    st = begin(out, command=command, force=force, argv=argv)
    try:
        yield st
        st.commit()
    finally:
        st.discard()


class Incremental:
    """An output folder that a resumable command fills file by file (``experiment``): the marker
    is written first and extended after each file, so an interrupted run can be resumed and
    every file in the folder stays accounted for. Only a folder that is new, empty, or holds a
    previous run of the same command is accepted; nothing else in it is touched."""

    def __init__(self, out: str | Path, *, command: str, argv: Sequence[str] = ()):
        if str(out).strip() == "":
            raise OutputError("--out is empty: name an output folder")
        self.out = Path(out)
        _check_name(self.out)
        self.command = command
        marker = read_marker(self.out) if _exists(self.out) else None
        if _exists(self.out):
            if not self.out.is_dir():
                raise OutputError(f"--out {self.out} exists and is not a folder")
            present = _files_under(self.out)
            ours = set(marker["files"]) if marker else set()
            foreign = [p for p in present if p not in ours]
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                raise OutputError(f"--out {self.out} holds files qanalysis did not write ({shown}); choose a new or empty folder")
            if marker and marker.get("command") != command:
                raise OutputError(f"--out {self.out} holds the results of 'qanalysis {marker.get('command')}'; choose another folder")
        self.resumed = bool(marker and marker["files"])
        self.files: list[str] = list(marker["files"]) if marker else []
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create output folder {self.out}: {e.strerror or e}") from None
        self.argv = list(argv)
        self._save()

    def _save(self) -> None:
        from .report import write_json

        write_json({"tool": "qanalysis", "command": self.command, "argv": self.argv,
                    "updated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "files": sorted(set(self.files))},
                   self.out / MARKER)  # fmt: skip

    def add(self, path: Path) -> None:
        """Record a file this run is about to write (atomically): recorded first, so an
        interruption never leaves an unaccounted file."""
        rel = str(Path(path).resolve().relative_to(self.out.resolve()))
        if rel not in self.files:
            self.files.append(rel)
            self._save()
