"""What this machine computes natively: the CPU's instruction-set flags and whether the CPU or the GPU has bf16.

Shared by training (``train.precision=auto``, :mod:`segformer_tao.engine.trainer`) and the CPU runtimes
(OpenVINO's ``cpu_precision``, :mod:`segformer_tao.deploy.openvino`), so both decide "native bf16" the same way.
"""

from __future__ import annotations

import torch

# /proc/cpuinfo flags that decide which CPU goals and precisions apply (printed by the benchmarks and in notes).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = "/proc/cpuinfo"  # the flags source (Linux); tests point it at a file of their own


def cpu_flags() -> dict[str, bool]:
    """Which of CPU_FLAGS this machine's CPU reports (Linux /proc/cpuinfo; all False elsewhere)."""
    try:
        with open(CPUINFO) as f:
            line = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        line = ""
    present = set(line.split(":", 1)[-1].split())
    return {flag: flag in present for flag in CPU_FLAGS}


def cpu_bf16_flags() -> list[str]:
    """The native-bf16 flags this CPU has (AVX-512 BF16, AMX-BF16); empty where bf16 would be emulated."""
    flags = cpu_flags()
    return [f for f in BF16_FLAGS if flags[f]]


def cpu_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX) and torch has oneDNN to use it."""
    return bool(cpu_bf16_flags()) and torch.backends.mkldnn.is_available()


def cuda_bf16() -> bool:
    """True when CUDA device 0 supports bf16 (compute capability >= 8.0: Ampere and later)."""
    return cuda_capability() >= (8, 0)


def cuda_capability() -> tuple[int, int]:
    """CUDA device 0's compute capability, (0, 0) without CUDA."""
    return torch.cuda.get_device_capability(0) if torch.cuda.is_available() else (0, 0)
