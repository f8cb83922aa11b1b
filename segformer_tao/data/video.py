"""Video in and out for `segformer inference inference.source=VIDEO` (PyAV, the ``[video]`` extra).

Frames are streamed: :class:`VideoFrames` decodes and preprocesses one frame at a time in a loader worker, and
:class:`VideoWriter` encodes frames in its own thread as they come, so no video is ever held whole in memory.
Outputs are written to a temp file beside the target and renamed when complete (a failed run leaves none).
"""

from __future__ import annotations

import contextlib
import os
import queue
import tempfile
import threading
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset

from segformer_tao import io
from segformer_tao.data.transforms import preprocess_image
from segformer_tao.errors import UserError

EXTRA = 'pip install "segformer_tao[video]"'


def _av():
    try:
        import av
    except ImportError as e:
        raise UserError(f"Reading and writing videos needs PyAV, which is not installed: {EXTRA} (or `pip install "
                        "av`). Images (a folder, glob or list) work without it.") from e
    return av


def _local(path: str) -> str:
    if io.is_remote(path):
        raise UserError(f"inference.source='{path}': videos are read from local files; copy it to this machine "
                        "first (images may stay on s3://).")
    return path


def _open(path: str):
    """(container, its first video stream); a file PyAV cannot open or decode -> UserError naming it."""
    av = _av()
    try:
        container = av.open(_local(path))
    except av.error.FFmpegError as e:
        raise UserError(f"Cannot open video '{path}': {e.strerror or e}. Check that the file is a complete "
                        "mp4/mov/avi/mkv video.") from e
    if not container.streams.video:
        container.close()
        raise UserError(f"'{path}' holds no video stream (audio only?). Give a video file.")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        container.close()
        raise UserError(f"Cannot decode video '{path}': its codec is not supported by PyAV's FFmpeg (no decoder for "
                        "it). Convert the video to H.264, e.g. `ffmpeg -i IN -c:v libx264 out.mp4`.")
    return container, stream


def probe(path: str) -> dict:
    """{"fps": Fraction, "frames": count in the header (0 = unknown), "width", "height", "codec"}."""
    container, stream = _open(path)
    try:
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        return {"fps": Fraction(rate), "frames": int(stream.frames or 0), "width": stream.codec_context.width,
                "height": stream.codec_context.height, "codec": stream.codec_context.name}
    finally:
        container.close()


class VideoFrames(IterableDataset):
    """The frames of a video in order, preprocessed like :class:`segformer_tao.data.loader.ImageFiles` items plus
    ``rgb`` (the decoded (H, W, 3) uint8 frame, for overlays and sliding windows). Read by one loader worker."""

    def __init__(self, path: str, img_size: int, mean: Sequence[float], std: Sequence[float], name: str) -> None:
        self.path, self.img_size, self.mean, self.std, self.name = path, int(img_size), list(mean), list(std), name

    def __iter__(self) -> Iterator[dict[str, Any]]:
        av = _av()
        container, stream = _open(self.path)
        stream.thread_type = "AUTO"
        index = 0
        try:
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                yield {"image": preprocess_image(rgb, self.img_size, self.mean, self.std),
                       "orig_size": tuple(rgb.shape[:2]), "path": self.path, "name": f"{self.name}/{index:06d}",
                       "rgb": rgb, "index": index}
                index += 1
        except av.error.FFmpegError as e:
            raise UserError(f"Cannot decode frame {index} of video '{self.path}' ({e.strerror or e}): the file is "
                            f"damaged there (frames 0-{index - 1} decode). Re-encode the video, or cut it before "
                            "that frame.") from e
        finally:
            container.close()


class VideoWriter:
    """Encode (H, W, 3) uint8 RGB frames (``gray=True``: (H, W) uint8 label masks, lossless FFV1) to ``path`` at
    ``fps``, in a thread of its own; ``close()`` waits for it and renames the temp file into place."""

    def __init__(self, path: str, fps: Fraction, width: int, height: int, gray: bool = False) -> None:
        self.av = _av()
        self.path, self.gray = path, gray
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=os.path.splitext(path)[1],
                                        dir=directory)
        os.close(fd)
        self.container = self.av.open(self.tmp, "w")
        codec = "ffv1" if gray else ("libx264" if "libx264" in self.av.codecs_available else "mpeg4")
        self.stream = self.container.add_stream(codec, rate=fps)
        self.stream.width, self.stream.height = width, height
        even = width % 2 == 0 and height % 2 == 0
        self.stream.pix_fmt = "gray" if gray else ("yuv420p" if even else "yuv444p")
        if codec == "libx264":
            self.stream.options = {"crf": "18", "preset": "veryfast"}
        self.queue: queue.Queue = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._encode, name="segformer-video-writer", daemon=True)
        self.thread.start()

    def _encode(self) -> None:
        fmt = "gray" if self.gray else "rgb24"
        while (array := self.queue.get()) is not None:
            if self.error is not None:
                continue
            try:
                frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=fmt)
                for packet in self.stream.encode(frame):
                    self.container.mux(packet)
            except Exception as e:  # noqa: BLE001 - re-raised by write()/close() on the main thread
                self.error = e

    def write(self, array: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(array)

    def close(self, ok: bool = True) -> None:
        """Flush and rename into place (``ok``), or drop the temp file."""
        self.queue.put(None)
        self.thread.join()
        try:
            if ok and self.error is None:
                for packet in self.stream.encode():
                    self.container.mux(packet)
        finally:
            self.container.close()
        if ok and self.error is None:
            os.replace(self.tmp, self.path)
            return
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)
        if self.error is not None and ok:
            raise self.error


def read_frames(path: str, gray: bool = False) -> Iterator[np.ndarray]:
    """The decoded frames of a video: (H, W, 3) uint8 RGB, or (H, W) uint8 with ``gray`` (mask videos)."""
    container, stream = _open(path)
    try:
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="gray" if gray else "rgb24")
    finally:
        container.close()
