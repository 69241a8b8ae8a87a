"""`mixed_precision: auto` turns bfloat16 on only where the CPU has bfloat16 units."""

from __future__ import annotations

import pytest

from pipeline.training.precision import choose, cpu_flags

# Abridged /proc/cpuinfo texts of real machines (one processor each).
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni
"""
SKYLAKE = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6154 CPU @ 3.00GHz
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl
bugs\t\t: spectre_v1 spectre_v2
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd sve bf16 i8mm
"""


def test_cpu_flags_reads_the_flags_line_only():
    assert {"avx512_bf16", "amx_bf16", "avx2"} <= cpu_flags(SAPPHIRE_RAPIDS)
    assert "spectre_v1" not in cpu_flags(SKYLAKE)
    assert cpu_flags(GRAVITON3) == set() and cpu_flags("") == set()


@pytest.mark.parametrize(
    ("cpuinfo", "policy", "why"),
    [
        (SAPPHIRE_RAPIDS, "mixed_bfloat16", "CPU has amx_bf16 and avx512_bf16"),
        (ZEN4, "mixed_bfloat16", "CPU has avx512_bf16"),
        (SKYLAKE, "float32", "CPU without avx512_bf16/amx_bf16"),
        (GRAVITON3, "float32", "CPU without"),  # x86 flags only: not measured on ARM
        ("", "float32", "CPU without"),  # macOS: no /proc/cpuinfo
    ],
    ids=["sapphire-rapids", "zen4", "skylake", "graviton3", "macos"],
)
def test_auto_on_a_cpu_is_bfloat16_only_with_bfloat16_units(cpuinfo, policy, why):
    chosen, reason = choose("auto", gpus=0, flags=cpu_flags(cpuinfo))
    assert chosen == policy
    assert reason.startswith("mixed_precision: auto") and why in reason


def test_gpus_get_float16_and_the_switches_win():
    bf16 = cpu_flags(SAPPHIRE_RAPIDS)
    assert choose("auto", gpus=1, flags=bf16)[0] == "mixed_float16"
    assert choose("on", gpus=2, flags=set())[0] == "mixed_float16"
    assert choose("on", gpus=0, flags=set()) == (
        "mixed_bfloat16",
        "mixed_precision: on, CPU: bfloat16",
    )  # forced: also where bfloat16 is emulated
    assert choose("off", gpus=1, flags=bf16) == ("float32", "mixed_precision: off")
