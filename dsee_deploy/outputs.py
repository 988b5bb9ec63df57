"""Where a command writes: checked before any slow work, built in a hidden directory beside the target, and moved
into place only once complete.

Every verb (tune, prune, export, bench) writes through `Output`, so that
- an output that is, holds or lies inside one of the command's inputs is refused up front (`--overwrite` would
  otherwise delete the checkpoint, the base model or the data the command is about to read);
- an existing non-empty output is replaced only with `--overwrite`, and only when the new one is complete: an
  interrupted run (Ctrl-C, SIGKILL, a full disk) leaves the previous output as it was, and nothing under the
  target's name that a later command would take for complete.

The work happens in `.NAME.partial-PID` beside the target (same filesystem, so the final move is a rename);
one left behind by a killed process is removed by the next run that writes the same target.

Two commands writing one target at once would both finish and both say "saved", the second silently replacing
the first: from `start()` to `commit()` or `abort()` a command holds an OS lock on `.NAME.lock` beside the
target, and a second command is refused in one line (with the pid of the first) instead of waiting. Its
checks are made again once it holds the lock, so that one coming after the first finished needs --overwrite.
The lock file is removed on release; one left by a killed process (whose lock the OS released) is only a
hidden file, taken over by the next command.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import DSEEError

PARTIAL = ".partial-"
LOCK = ".lock"


def _related(out: Path, inp: Path) -> str | None:
    """How output `out` relates to input `inp` (both resolved), or None when they are apart."""
    if out == inp:
        return "is"
    if out in inp.parents:
        return "holds"
    if inp in out.parents:
        return "lies inside"
    return None


def check_output(
    path: str | Path,
    overwrite: bool,
    inputs: Mapping[str, str | Path | Iterable[str | Path] | None] = (),
    flag: str = "--output",
    keep: tuple[str, ...] = (),
) -> Path:
    """Refuse `path` when it is a file or a symbolic link, when it is, holds or lies inside any of `inputs`
    ({flag: path or paths}; missing ones are skipped), or when it exists with content (other than the entries
    `keep`) and `overwrite` is off. Touches nothing."""
    out = Path(path)
    if out.is_symlink():
        raise DSEEError(
            f"{flag} '{out}' is a symbolic link (to '{os.readlink(out)}'): pass the directory itself, or another "
            f"path"
        )
    if out.exists() and not out.is_dir():
        raise DSEEError(f"{flag} '{out}' exists and is a file: choose a directory path")
    resolved = out.resolve()
    for name, value in dict(inputs).items():
        values = [value] if isinstance(value, (str, Path)) else list(value or ())
        for item in values:
            if item is None or not Path(item).exists():
                continue
            inp = Path(item).resolve()
            relation = _related(resolved, inp)
            if relation == "holds" and inp.relative_to(resolved).parts[0] in keep:
                continue  # inside an entry that --overwrite keeps (a suite's work/)
            if relation:
                raise DSEEError(
                    f"{flag} '{out}' {relation} {name} '{item}': write the output somewhere else (with "
                    f"--overwrite it would delete the input first)"
                )
    if out.is_dir() and not overwrite and any(p.name not in keep for p in out.iterdir()):
        raise DSEEError(f"{flag} '{out}' already exists and is not empty: pass --overwrite to replace it")
    return out


class Output:
    """A target directory written atomically: check it, `start()` the hidden work directory (cheap: call it
    before the slow work, so that an unwritable place fails first), write into `.path`, then `commit()`;
    `abort()` (or leaving a `with` block by an exception) removes the work directory and keeps the target."""

    def __init__(
        self,
        target: str | Path,
        overwrite: bool,
        inputs: Mapping[str, str | Path | Iterable[str | Path] | None] = (),
        flag: str = "--output",
        keep: tuple[str, ...] = (),
    ):
        self.target = check_output(target, overwrite, inputs, flag, keep)
        self.flag, self.keep = flag, keep
        self._checks = (overwrite, inputs)
        self.path: Path | None = None
        self._lock: _Lock | None = None

    def start(self, create: bool = True) -> Path:
        """The work directory; `create=False` names it only (the other processes of a distributed run share
        the main one's)."""
        from .distributed import run_token, world_size

        parent = self.target.absolute().parent
        if not create:
            self.path = parent / f".{self.target.name}{PARTIAL}{run_token()}"
            return self.path
        above = next(p for p in (parent, *parent.parents) if p.exists())
        if not above.is_dir():
            raise DSEEError(f"{self.flag} '{self.target}' cannot be created: '{above}' is a file")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            if self._lock is None:
                self._lock = _Lock.take(parent / f".{self.target.name}{LOCK}", self.target, self.flag)
            work = parent / f".{self.target.name}{PARTIAL}{run_token()}"
        except OSError as exc:
            raise DSEEError(
                f"{self.flag} '{self.target}' cannot be written ({exc.strerror or exc}): choose a writable path"
            ) from exc
        try:
            # Checked again under the lock: another command may have finished writing the target since.
            check_output(self.target, *self._checks, self.flag, self.keep)
            _remove_stale(parent, self.target.name)
            if world_size() == 1:  # a leftover of this pid; in a distributed run the others may write already
                shutil.rmtree(work, ignore_errors=True)
            work.mkdir(exist_ok=True)
        except BaseException as exc:
            self._release()
            if isinstance(exc, OSError):
                raise DSEEError(
                    f"{self.flag} '{self.target}' cannot be written ({exc.strerror or exc}): choose a writable "
                    f"path"
                ) from exc
            raise
        self.path = work
        return work

    def probe(self) -> None:
        """Check now that the target can be written (before a long run that writes it at the end)."""
        self.start()
        self.abort()

    def commit(self, target: Path | None = None) -> Path:
        """Move the finished work into place (or at `target`, e.g. beside it for a failed export), replacing
        what was there; entries named in `keep` move over from the old directory."""
        assert self.path is not None, "Output.start() first"
        shown = target or self.target
        dest = shown.absolute()
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        if dest.exists():
            for name in self.keep:
                if (dest / name).exists() and not (self.path / name).exists():
                    (dest / name).rename(self.path / name)
            dest.rename(old)
        self.path.rename(dest)
        self.path = None
        self._release()
        shutil.rmtree(old, ignore_errors=True)
        return shown

    def abort(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Path:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _remove_stale(parent: Path, name: str) -> None:
    """Work directories of `name` whose process is gone (killed before it could clean up)."""
    for entry in parent.glob(f".{name}{PARTIAL}*"):
        pid = entry.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


class _Lock:
    """An exclusive OS lock (flock) on a file, held by this open file until `release()` or the process ends,
    however it ends: the lock of a killed command is free again, and nothing it left counts as held."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    @classmethod
    def take(cls, path: Path, target: Path, flag: str) -> _Lock | None:
        """Lock `path` without waiting; refused in one line, naming the holder, when another command holds it.
        None where the OS has no flock (Windows): there, commands are not kept apart."""
        try:
            import fcntl
        except ImportError:
            return None

        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # The holder writes who it is just after it locks: a command refused in between would find the
                # file still empty (seen when two exports started together on a loaded machine), so it waits a
                # second at most for the name it refuses with.
                for _ in range(40):
                    holder = os.pread(fd, 200, 0).decode(errors="replace").split()
                    if len(holder) == 2:
                        break
                    time.sleep(0.025)
                os.close(fd)
                who = f"{holder[1]} (pid {holder[0]})" if len(holder) == 2 else "command"
                raise DSEEError(
                    f"another {who} is writing {flag} '{target}': wait for it to finish, or pass another {flag}"
                ) from None
            # Its holder removes the file before it lets go: the file locked here may no longer be the one at
            # `path`, which a third command may hold. Locked and still in place, it is ours.
            try:
                here = os.stat(path)
            except FileNotFoundError:
                here = None
            mine = os.fstat(fd)
            if here is not None and (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                break
            os.close(fd)
        try:  # who holds it, for the message of the command refused; a full disk has no room even for that
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {_program()}\n".encode(), 0)
        except OSError:
            pass
        return cls(fd, path)

    def release(self) -> None:
        try:
            self.path.unlink(missing_ok=True)  # while still locked, so that nobody holds the removed file
        finally:
            os.close(self.fd)


def _program() -> str:
    """The command's name as the user typed it (dsee-export), else what runs it (the Python API)."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name.startswith("dsee-") else "process"
