"""Peak dense FLOP/s of the accelerators MFU is computed against, with the source of every entry.

MFU = achieved FLOP/s / peak FLOP/s of the precision the matmuls ran in. NVIDIA's datasheets
quote tensor-core rates "with sparsity" (2:4 structured sparsity doubles them); a dense model
cannot use that, so every tensor-core entry here is the datasheet figure halved, as the
datasheets' own footnotes say ("Specifications are one-half lower without sparsity"). FP32
(no tensor cores) has no sparsity factor. The handout's own figures agree: A100 fp32 19.5
TFLOP/s (2025) and H100 TF32 495 TFLOP/s (2026, = 989 / 2).

Which precision a run's matmuls use: "bf16" under bf16 autocast; for fp32 tensors, "tf32"
when torch.get_float32_matmul_precision() is "high" or "medium" (TF32 tensor cores), else
"fp32" (PyTorch's default "highest" since 1.12). A CPU has no entry: its peak is measured in
the same run (bench cell `matmul-cpu-<dtype>`).

Pure data and string matching, no torch import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass(frozen=True)
class Peak:
    """Dense peak TFLOP/s of one accelerator, per precision, and where the numbers come from."""

    name: str  # what the table shows, e.g. "H100 SXM5"
    pattern: str  # regex matched (case-insensitive) against torch.cuda.get_device_name()
    tflops: dict[str, float]  # precision -> dense TFLOP/s
    source: str  # datasheet the numbers come from


PEAKS: tuple[Peak, ...] = (
    # Order matters: the first matching pattern wins (H100 NVL/PCIe before the SXM catch-all).
    Peak("A100 (SXM4 / PCIe)", r"\bA100\b", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
         "NVIDIA A100 Tensor Core GPU datasheet (2021): FP32 19.5, TF32 156 (312 sparse), BF16 312 (624 sparse) TFLOPS"),
    Peak("H100 NVL", r"\bH100\b.*\bNVL\b", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5},
         "NVIDIA H100 Tensor Core GPU datasheet (2023), H100 NVL: FP32 60, TF32 835 sparse, BF16 1,671 sparse TFLOPS"),
    Peak("H100 PCIe", r"\bH100\b.*\bPCIe\b", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5},
         "NVIDIA H100 Tensor Core GPU datasheet (2023), H100 PCIe: FP32 51, TF32 756 sparse, BF16 1,513 sparse TFLOPS"),
    Peak("H100 SXM5", r"\bH100\b", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5},
         "NVIDIA H100 Tensor Core GPU datasheet (2023), H100 SXM: FP32 67, TF32 989 sparse, BF16 1,979 sparse TFLOPS"),
    Peak("H200 NVL", r"\bH200\b.*\bNVL\b", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5},
         "NVIDIA H200 Tensor Core GPU datasheet (2024), H200 NVL: FP32 60, TF32 835 sparse, BF16 1,671 sparse TFLOPS"),
    Peak("H200 SXM", r"\bH200\b", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5},
         "NVIDIA H200 Tensor Core GPU datasheet (2024), H200 SXM: FP32 67, TF32 989 sparse, BF16 1,979 sparse TFLOPS"),
    Peak("B200 (HGX)", r"\bB200\b", {"fp32": 75.0, "tf32": 1100.0, "bf16": 2250.0},
         "NVIDIA HGX B200 specifications (2024), per GPU: FP32 75, TF32 2.2 PFLOPS sparse, BF16 4.5 PFLOPS sparse"),
)


def lookup(device_name: str) -> Peak | None:
    """The table entry for a CUDA device name (torch.cuda.get_device_name), or None."""
    for peak in PEAKS:
        if re.search(peak.pattern, device_name, flags=re.IGNORECASE):
            return peak
    return None


def matmul_precision(dtype: str, float32_matmul_precision: str = "highest") -> str:
    """The precision the matmuls of a run execute in: "bf16", "tf32" or "fp32"."""
    if dtype in ("bf16", "fp16"):
        return "bf16"  # fp16 and bf16 tensor-core rates are equal on every GPU listed here
    return "tf32" if float32_matmul_precision in ("high", "medium") else "fp32"


def peak_tflops(device_name: str, precision: str) -> tuple[float | None, str]:
    """(dense peak TFLOP/s, source) for a device and precision; (None, why) when unknown."""
    peak = lookup(device_name)
    if peak is None:
        return None, f"no peak table entry for {device_name!r} (lmreport/peaks.py lists A100, H100, H200, B200)"
    return peak.tflops[precision], f"{peak.name} {precision} dense: {peak.source}"
