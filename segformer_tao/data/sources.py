"""What `segformer inference inference.source=PATH` reads: images and videos as users have them.

A source is one image file, a folder (searched recursively), a glob (``photos/**/*.jpg``), a text file listing
paths (one per line, ``#`` comments; relative lines are relative to the list's folder), an ``s3://`` prefix, or
a video file (mp4/mov/avi/mkv/webm/m4v, read by segformer_tao/data/video.py). Listing reads no pixels: it is
cheap enough for the CLI to run before any heavy import, so a wrong path fails in about a second.

Output names keep each file's path relative to the source's base folder, extension dropped
(``photos/a/x.jpg`` and ``photos/b/x.png`` -> ``a/x`` and ``b/x``), so files of the same name in different
folders never overwrite each other; two files differing only by extension keep it (``x.jpg``, ``x.png``).
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from segformer_tao import io
from segformer_tao.errors import UserError

log = logging.getLogger("segformer_tao")

KEY = "inference.source"
# Extensions PIL decodes (decode_image reads them all); anything else in a folder is skipped with a note.
IMAGE_EXTS = frozenset((".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif",
                        ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".j2k", ".ico"))
VIDEO_EXTS = frozenset((".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"))
LIST_EXTS = frozenset((".txt", ".lst", ".list"))
_GLOB_CHARS = "*?["
_SHOWN = 3


@dataclass(frozen=True)
class Source:
    """A listed source: ``files`` (paths or URLs) with their output ``names`` (relative, no extension), or one
    ``video`` file (its output name in ``names[0]``). ``skipped``: non-image files left out."""

    value: str
    files: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    video: str | None = None
    skipped: list[str] = field(default_factory=list)


def _ext(path: str) -> str:
    return PurePosixPath(str(path)).suffix.lower()


def output_names(files: list[str], base: str) -> list[str]:
    """Each file's path relative to ``base`` with the extension dropped ('/' separated); files whose names would
    collide (``x.jpg`` and ``x.png`` in one folder) keep their extension. Without a ``base`` (or for a file
    outside it): the file name."""
    rel = []
    for f in files:
        r = PurePosixPath(f).name
        if base and io.is_remote(f) and f.startswith(base.rstrip("/") + "/"):
            r = f[len(base.rstrip("/")) + 1:]
        elif base and not io.is_remote(f):
            inside = os.path.relpath(f, base)
            r = r if inside.startswith("..") else inside.replace(os.sep, "/")
        rel.append(r)
    stems = [r[: -len(PurePosixPath(r).suffix)] if PurePosixPath(r).suffix else r for r in rel]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else r for s, r in zip(stems, rel)]


def _split_images(paths: list[str]) -> tuple[list[str], list[str]]:
    images = [p for p in paths if _ext(p) in IMAGE_EXTS]
    return images, [p for p in paths if _ext(p) not in IMAGE_EXTS]


def _images_source(value: str, paths: list[str], base: str, where: str) -> Source:
    paths = sorted(paths)
    images, skipped = _split_images(paths)
    if not images:
        what = (f"holds no image files (it has {len(paths)} other file(s), e.g. "
                f"{', '.join(PurePosixPath(p).name for p in skipped[:_SHOWN])})") if paths else "is empty"
        raise UserError(f"{KEY}='{value}': {where} {what}. Point {KEY} at images ({', '.join(sorted(IMAGE_EXTS))}), "
                        "a folder or glob of them, a text file listing them, or a video file.")
    return Source(value, images, output_names(images, base), skipped=skipped)


def _walk(folder: str) -> list[str]:
    """Files under a local folder, recursively; hidden files and folders (``.git``, ``.DS_Store``) left out."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(root, f) for f in files if not f.startswith(".")]
    return found


def _remote(value: str) -> Source:
    from segformer_tao.data import storage

    fs, path = storage.open_fs(value)
    proto = value.split("://", 1)[0] + "://"
    if _ext(value) in IMAGE_EXTS | VIDEO_EXTS:
        return Source(value, [value], [PurePosixPath(value).stem]) if _ext(value) in IMAGE_EXTS else \
            Source(value, names=[PurePosixPath(value).stem], video=value)
    try:
        keys = storage.with_retries(lambda: fs.find(path.rstrip("/")), value)
    except UserError:
        raise
    except Exception as e:
        raise storage.remote_error(e, value) from e
    urls = [proto + k for k in keys if not PurePosixPath(k).name.startswith(".")]
    return _images_source(value, urls, value.rstrip("/"), "the prefix")


def _from_list(value: str) -> Source:
    folder = os.path.dirname(os.path.abspath(value))
    try:
        lines = io.read_text(value).splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{KEY}='{value}' is not a text file listing image paths (it is not UTF-8 text).") from e
    paths = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = line if io.is_remote(line) or os.path.isabs(line) else os.path.join(folder, line)
        if not io.is_remote(p) and not os.path.isfile(p):
            raise UserError(f"{KEY}='{value}' line {n} names '{line}', which is not a file (relative lines are "
                            f"relative to the list's folder {folder}). Fix or remove that line.")
        paths.append(p)
    local = [os.path.dirname(os.path.abspath(p)) for p in paths if not io.is_remote(p)]
    base = os.path.commonpath(local) if local and len(local) == len(paths) else ""
    src = _images_source(value, [os.path.abspath(p) if not io.is_remote(p) else p for p in paths], base,
                         "the list")
    return Source(value, src.files, src.names, skipped=src.skipped)


def list_source(value: str) -> Source:
    """List ``inference.source``: a UserError names the value and the fix when it is missing, matches nothing,
    or holds no images."""
    value = str(value).strip()
    if io.is_remote(value):
        return _remote(value)
    value = os.path.expanduser(value)
    if any(ch in value for ch in _GLOB_CHARS) and not os.path.exists(value):
        matches = [p for p in glob.glob(value, recursive=True) if os.path.isfile(p)]
        if not matches:
            raise UserError(f"{KEY}='{value}' is a glob that matches no file. Check the pattern (quote it so the "
                            "shell does not expand it; `**` searches subfolders).")
        magic = min(value.find(ch) for ch in _GLOB_CHARS if ch in value)
        base = os.path.dirname(value[:magic]) or "."
        return _images_source(value, [os.path.normpath(p) for p in matches], os.path.normpath(base), "the glob")
    if os.path.isdir(value):
        folder = os.path.normpath(value)
        return _images_source(value, _walk(folder), folder, "the folder (searched recursively)")
    if not os.path.isfile(value):
        raise UserError(f"{KEY}='{value}' does not exist. Give an image, a folder, a glob, a text file listing "
                        "images, an s3:// prefix or a video file.")
    ext = _ext(value)
    if ext in VIDEO_EXTS:
        return Source(value, names=[PurePosixPath(value).stem], video=value)
    if ext in IMAGE_EXTS:
        return Source(value, [value], [PurePosixPath(value).stem])
    if ext in LIST_EXTS:
        return _from_list(value)
    raise UserError(f"{KEY}='{value}' is neither an image ({', '.join(sorted(IMAGE_EXTS))}), a video "
                    f"({', '.join(sorted(VIDEO_EXTS))}) nor a text list of paths (.txt, .lst). Point {KEY} at one.")


def note_skipped(src: Source) -> None:
    """One line for the non-image files a folder, glob or list held."""
    if src.skipped:
        shown = ", ".join(PurePosixPath(p).name for p in src.skipped[:_SHOWN])
        more = f" and {len(src.skipped) - _SHOWN} more" if len(src.skipped) > _SHOWN else ""
        log.info("note: %s: skipped %d non-image file(s) (%s%s)", KEY, len(src.skipped), shown, more)
