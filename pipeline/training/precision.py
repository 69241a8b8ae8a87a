"""Which floating-point precision training runs in, and why: a pure decision, tested alone.

`train.runtime.mixed_precision`:
- `off`: float32.
- `on`: float16 on a GPU (tensor cores); bfloat16 on a CPU (CPUs emulate float16).
- `auto`: float16 on a GPU; bfloat16 on a CPU with bfloat16 units (the x86 flags
  `avx512_bf16` or `amx_bf16` in /proc/cpuinfo: Intel Cooper Lake / Sapphire Rapids and
  later, AMD Zen 4 and later), where it trains the convnets faster at the same accuracy
  (docs/performance.md); float32 on other CPUs (and on macOS, which has no
  /proc/cpuinfo), where bfloat16 is emulated and slower.
Variables stay float32 under mixed precision (Keras' `mixed_*` policies).
"""

from __future__ import annotations

from pathlib import Path

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first CPU in a /proc/cpuinfo text (x86: `flags : ...`)."""
    return set(_first_field(cpuinfo, "flags").split())


def _first_field(cpuinfo: str, name: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def this_cpu_flags() -> set[str]:
    try:
        return cpu_flags(CPUINFO.read_text())
    except OSError:  # macOS, or a sandbox without /proc
        return set()


def this_cpu() -> dict[str, str]:
    """This machine's CPU model and bfloat16 units, as tags: results name where they ran."""
    try:
        cpuinfo = CPUINFO.read_text()
    except OSError:
        cpuinfo = ""
    units = sorted(set(BF16_CPU_FLAGS) & cpu_flags(cpuinfo))
    return {
        "cpu.model": _first_field(cpuinfo, "model name") or "unknown",
        "cpu.bf16_units": ",".join(units) or "none",
    }


def choose(switch: str, gpus: int, flags: set[str]) -> tuple[str, str]:
    """(Keras dtype policy, the reason in words) for `mixed_precision: switch`."""
    if switch == "off":
        return "float32", "mixed_precision: off"
    if gpus:
        return "mixed_float16", f"mixed_precision: {switch}, GPU: float16"
    if switch == "on":
        return "mixed_bfloat16", "mixed_precision: on, CPU: bfloat16"
    units = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    if units:
        return "mixed_bfloat16", f"mixed_precision: auto, CPU has {' and '.join(units)}"
    return "float32", "mixed_precision: auto, CPU without avx512_bf16/amx_bf16 (bfloat16 slower)"
