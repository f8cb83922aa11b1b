"""User-facing errors: the CLI prints them as one paragraph and exits with code 2 (no traceback)."""

from __future__ import annotations

import re


class UserError(Exception):
    """A mistake the user can fix (bad key, missing file, wrong value).

    The message must name the key, file or value at fault and say how to fix it.
    """

    exit_code = 2


class NotAvailableError(UserError):
    """An optional component (TensorRT, a GPU, an extra package) is not installed on this machine."""


def explain_exception(e: BaseException) -> UserError | None:
    """Turn well-known environment failures (out of memory, disk full or file too large, permission denied)
    into a UserError.

    Returns None when the exception is not one the user can fix (a bug: the CLI prints the traceback).
    """
    import errno

    text = str(e)
    if type(e).__name__ == "OutOfMemoryError" or "CUDA out of memory" in text:
        return UserError(
            "The GPU ran out of memory. Lower dataset.segment.batch_size or dataset.segment.img_size (memory grows "
            "with img_size^2), or use train.precision=bf16-mixed. The last checkpoint written is kept; running the "
            "same command again resumes from it."
        )
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        # EFBIG: the file outgrew a size limit (`ulimit -f`, filesystem or quota); same remedy as a full disk.
        why = {errno.ENOSPC: "No space left on the device", errno.EDQUOT: "Disk quota exceeded",
               errno.EFBIG: "File too large for this system's file-size limit (ulimit -f) or disk"}[e.errno]
        return UserError(
            f"{why} while writing '{e.filename or 'a file'}'. Free disk space (or raise the limit) or point "
            "results_dir at a larger disk, then run the same command again. Nothing was left half-written: "
            "every file is written to a temporary name and renamed when complete, so the files already there "
            "(including the last checkpoint) are intact."
        )
    if isinstance(e, PermissionError):
        return UserError(f"Permission denied: '{e.filename}'. Choose a writable results_dir or fix the permissions.")
    return None


def refused_global(e: BaseException) -> str | None:
    """The global (``module.name``) that ``torch.load(weights_only=True)`` refused, or None for other failures
    (garbage bytes fail weights_only loading too, without naming any code)."""
    found = re.search(r"GLOBAL (\S+)", str(e)) if "Weights only load failed" in str(e) else None
    return found.group(1) if found else None


def refused_pickle(path: str, e: BaseException) -> UserError | None:
    """The UserError for a file that ``torch.load(weights_only=True)`` refused because its pickle names code
    (e.g. ``posix.system``) rather than tensors and plain containers; None for any other failure."""
    named = refused_global(e)
    if named is None:
        return None
    if named.split(".")[0] == "torchao":  # only our torchao INT8 checkpoints, and only their own types, pass
        return UserError(
            f"Refused to load '{path}': it references {named}. torchao types are read only from the INT8 checkpoints "
            "of `segformer quantize quantize.backend=torchao` (by evaluate, inference, export), and only the ones "
            "those hold; pretrained weights must be float, and a checkpoint from another torchao version or tool "
            "must be quantized again from its float checkpoint.")
    return UserError(
        f"Refused to load '{path}': it holds pickled Python objects besides tensors and plain containers (it "
        f"references {named}), and "
        "unpickling them could run code. segformer_tao only loads weights with torch.load(weights_only=True). "
        "Use a checkpoint written by `segformer train` or a .safetensors file; if you trust the file's source, "
        "re-save just its state_dict with the tool that wrote it."
    )


def load_failure_reason(e: BaseException) -> str:
    """``Type: first line`` of a torch.load failure, without torch's advice to retry with weights_only=False
    (that would run whatever code the file's pickle names)."""
    lines = str(e).splitlines()
    first = lines[0].split(" Re-running")[0][:200] if lines else ""
    return f"{type(e).__name__}: {first}"


def out_of_memory(cfg, action: str) -> UserError:
    """The out-of-memory error of ``action`` (train, evaluate, inference, quantize): the keys that set its memory."""
    seg = cfg.dataset.segment
    grows = f"memory grows with dataset.segment.img_size^2 (now {seg.img_size})"
    if action == "train":
        return UserError(f"Out of memory during training with dataset.segment.batch_size={seg.batch_size} and "
                         f"dataset.segment.img_size={seg.img_size} (backbone {cfg.model.backbone.type}). Lower "
                         f"dataset.segment.batch_size or dataset.segment.img_size ({grows}), use "
                         "train.precision=bf16-mixed, or a smaller backbone. The last saved checkpoint is kept; "
                         "rerun the same command to resume from it.")
    if action in ("evaluate", "inference"):
        windows = (" or inference.sliding_window=true (large images run in img_size windows)"
                   if action == "inference" else "")
        return UserError(f"Out of memory during {action} with {action}.batch_size={cfg[action].batch_size}. Lower "
                         f"{action}.batch_size{windows}; {grows}, and every image's logits are resized to its own "
                         "size, so very large images need memory of their own.")
    return UserError(f"Out of memory during {action}. Lower quantize.backend_kwargs.calibration_batch_size (default 8) "
                     f"or max_calibration_images; {grows}.")


class Preempted(Exception):
    """Training stopped on a preemption signal (SIGTERM, SIGUSR1, train.preemption_signal) after writing a resumable
    checkpoint: normal life on a cluster, not a failure. The CLI exits with :attr:`exit_code`; status.json says
    PREEMPTED and job.json ``preempted``; the same command (or a requeued job) resumes from ``checkpoint``."""

    exit_code = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, retrying is expected to succeed

    def __init__(self, signal_name: str, checkpoint: str, epoch: int, step: int):
        """``epoch``: epochs done (the current one not counted when stopped mid-epoch); ``step``: global step."""
        self.signal_name, self.checkpoint, self.epoch, self.step = signal_name, checkpoint, epoch, step
        super().__init__(f"Training was preempted by {signal_name} at step {step} ({epoch} epoch(s) done); its full "
                         f"state is in {checkpoint}. Run the same command again (a requeued job does) to resume "
                         "from that step.")
