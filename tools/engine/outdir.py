"""Where a render may write, and what it may remove: only what an earlier render wrote.

A render directory carries a marker file listing every file the render wrote. Rendering again into
it removes exactly those files (a hand-made file beside them is kept); a non-empty directory
without the marker is refused unless ``--force``; an empty path, a path that is a file, and any
file-system error are one line naming ``--out`` (exit 2 in the CLI).
"""

from __future__ import annotations

import os
from pathlib import Path

MARKER = ".aiinfn-render"
MARKER_HEAD = "# written by `aiinfn render`: the files of the last render into this directory (removed by the next)\n"


class OutDirError(Exception):
    """One line for the operator: what is wrong with the output directory."""

    def __str__(self) -> str:
        return f"--out: {self.args[0]}"


def _describe(err: OSError, path: Path) -> str:
    return f"{err.filename or path}: {err.strerror or err}"


def check_target(out: str | Path, force: bool = False) -> Path:
    """Refuse, before anything is rendered, an output directory a render must not write into."""
    if str(out).strip() == "":
        raise OutDirError("an empty path; give the directory to render into (e.g. --out out/<stack>)")
    path = Path(out)
    try:
        if path.exists() and not path.is_dir():
            raise OutDirError(f"{path} is a file, not a directory")
        if path.is_dir():
            entries = [e.name for e in path.iterdir()]
            if entries and MARKER not in entries and not force:
                raise OutDirError(f"{path} is not empty and holds no earlier render (no {MARKER}); "
                                  "choose an empty directory, or pass --force to write into it anyway")
            if not os.access(path, os.W_OK | os.X_OK):
                raise OutDirError(f"{path}: not writable")
        else:
            parent = next((p for p in path.absolute().parents if p.exists()), None)
            if parent is not None and not parent.is_dir():
                raise OutDirError(f"{parent} is a file, not a directory")
            if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
                raise OutDirError(f"cannot create {path}: {parent} is not writable")
    except OSError as err:
        raise OutDirError(_describe(err, path)) from None
    return path


def previous_files(out: Path) -> list[str]:
    """The files an earlier render wrote here (relative paths), read from the marker."""
    marker = out / MARKER
    if not marker.is_file():
        return []
    lines = marker.read_text(encoding="utf-8", errors="replace").splitlines()
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _inside(out: Path, rel: str) -> Path | None:
    """A marker entry as a path inside ``out`` (an edited marker cannot make a render delete elsewhere)."""
    if os.path.isabs(rel) or ".." in Path(rel).parts:
        return None
    return out / rel


def replace_files(out: Path, files: dict[str, str]) -> None:
    """Write ``files`` (relative path -> text) into ``out``: remove the earlier render's files first,
    keep everything else, then write the marker listing what this render wrote."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for rel in previous_files(out):
            target = _inside(out, rel)
            if target is not None and target.is_file() and rel not in files:
                target.unlink()
                parent = target.parent
                while parent != out and parent.is_dir() and not any(parent.iterdir()):
                    parent.rmdir()
                    parent = parent.parent
        for rel, text in files.items():
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        (out / MARKER).write_text(MARKER_HEAD + "".join(f"{rel}\n" for rel in sorted(files)), encoding="utf-8")
    except OSError as err:
        raise OutDirError(_describe(err, out)) from None
