"""The CPU instruction set an INT8 artifact is built for, and what it changes.

x86 CPUs multiply INT8 in one of two ways, and an INT8 model can be right on one and wrong on the other:

  VNNI (AVX-512 VNNI, AVX-VNNI, AMX)  u8 x s8 products accumulate straight into 32 bits: exact.
  AVX2 / AVX-512 without VNNI         pairs of u8 x s8 products are added into a saturating signed
                                      16-bit value first (VPMADDUBSW): 255 * 127 * 2 = 64,770 overflows
                                      32,767. With 7-bit weights (255 * 64 * 2 = 32,640) it cannot.

So an artifact for a CPU without VNNI quantises weights to 7 bits (ONNX Runtime's `reduce_range`,
NNCF's `overflow_fix`), and float layers run in bfloat16 only where the CPU has bf16 instructions
(elsewhere OpenVINO silently computes f32). `calibration.overflow_fix` and
`openvino.inference_precision` in a recipe say `auto` for "as the deployment ISA needs".

The deployment ISA is the recipe's `deployment_isa`, or the build machine's (`auto`). The build
machine's is read from /proc/cpuinfo and lowered by ONEDNN_MAX_CPU_ISA when set, which caps the oneDNN
inside OpenVINO: an AVX-512 machine then computes OpenVINO INT8 as an AVX2 one does (ONNX Runtime's
kernels have no such cap: they always use the CPU's best).

This module is torch-free: a torch-free `check --golden` reads it.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

IsaName = Literal["x86-avx2", "x86-avx2-vnni", "x86-avx512", "x86-avx512-vnni", "x86-avx512-bf16", "x86-amx",
                  "arm64", "other"]
# Lowest to highest: a cap (ONEDNN_MAX_CPU_ISA) picks the lower of two.
X86_ORDER: tuple[str, ...] = ("x86-avx2", "x86-avx2-vnni", "x86-avx512", "x86-avx512-vnni", "x86-avx512-bf16",
                              "x86-amx")
# The flags (as /proc/cpuinfo spells them) that decide INT8 arithmetic and float precision.
INT8_FLAGS: tuple[str, ...] = ("avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni",
                               "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA) and the ISA each caps a CPU at.
_ONEDNN_CAPS: dict[str, str] = {
    "AVX2": "x86-avx2", "AVX2_VNNI": "x86-avx2-vnni", "AVX2_VNNI_2": "x86-avx2-vnni",
    "AVX512_CORE": "x86-avx512", "AVX512_CORE_VNNI": "x86-avx512-vnni", "AVX512_CORE_BF16": "x86-avx512-bf16",
    "AVX10_1_512": "x86-avx512-bf16", "AVX512_CORE_FP16": "x86-avx512-bf16", "AVX512_CORE_AMX": "x86-amx",
    "AVX512_CORE_AMX_FP16": "x86-amx", "AVX10_1_512_AMX": "x86-amx", "AVX10_1_512_AMX_FP16": "x86-amx",
}


@dataclass(frozen=True)
class Isa:
    """An instruction set as INT8 sees it."""

    name: str

    @property
    def vnni(self) -> bool:
        """Whether u8 x s8 products accumulate exactly (no 16-bit saturation)."""
        return self.name not in ("x86-avx2", "x86-avx512")

    @property
    def bf16(self) -> bool:
        """Whether the CPU computes bfloat16 natively (OpenVINO ignores a bf16 hint elsewhere)."""
        return self.name in ("x86-avx512-bf16", "x86-amx")

    @property
    def int8_arithmetic(self) -> str:
        return "exact 32-bit accumulation" if self.vnni else "u8 x s8 pairs saturate at 16 bits (VPMADDUBSW)"

    @property
    def overflow_fix(self) -> str:
        """What `calibration.overflow_fix: auto` means here: 7-bit weights everywhere where products
        can saturate; elsewhere NNCF's default (the first convolution only) and ONNX Runtime's 8 bits."""
        return "first_layer" if self.vnni else "enable"


def isa_from_flags(flags: set[str] | frozenset[str], machine: str = "x86_64") -> Isa:
    if machine.lower() in ("aarch64", "arm64"):
        return Isa("arm64")
    if "avx2" not in flags:
        return Isa("other")
    if {"amx_tile", "amx_int8"} <= flags:
        return Isa("x86-amx")
    if "avx512f" in flags:
        if "avx512_bf16" in flags and "avx512_vnni" in flags:
            return Isa("x86-avx512-bf16")
        return Isa("x86-avx512-vnni" if "avx512_vnni" in flags else "x86-avx512")
    return Isa("x86-avx2-vnni" if "avx_vnni" in flags else "x86-avx2")


def cpu_flags() -> list[str]:
    """The INT8-relevant flags of this CPU (empty where /proc/cpuinfo cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    found = re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.M)
    return sorted(set(found.group(1).split()) & set(INT8_FLAGS)) if found else []


def capped(isa: Isa, cap: str | None = None) -> Isa:
    """`isa` lowered to ONEDNN_MAX_CPU_ISA (or `cap`) when that names a lower x86 ISA."""
    cap = (cap if cap is not None else os.environ.get("ONEDNN_MAX_CPU_ISA", "")).strip().upper()
    limit = _ONEDNN_CAPS.get(cap)
    if limit is None or isa.name not in X86_ORDER:
        return isa
    return Isa(min(isa.name, limit, key=X86_ORDER.index))


def host_isa() -> Isa:
    """This machine's ISA as OpenVINO's oneDNN will use it (ONEDNN_MAX_CPU_ISA applied)."""
    return capped(isa_from_flags(set(cpu_flags()), platform.machine()))


def host_description() -> dict[str, object]:
    """What a manifest or report records of the machine: ISA name, flags, the cap if any."""
    described: dict[str, object] = {"isa": host_isa().name, "flags": cpu_flags(), "machine": platform.machine()}
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    if cap:
        described["onednn_max_cpu_isa"] = cap
    return described


def deployment_isa(requested: str) -> Isa:
    """The ISA a recipe builds for: its `deployment_isa`, or this machine's for `auto`."""
    return host_isa() if requested == "auto" else Isa(requested)


def resolve_overflow_fix(requested: str, deployment: str) -> str:
    """`calibration.overflow_fix` with auto resolved for the recipe's `deployment_isa`."""
    return deployment_isa(deployment).overflow_fix if requested == "auto" else requested


def arithmetic_mismatch(built_for: str, checked_on: str) -> str | None:
    """One line when an INT8 artifact built for one ISA is checked on a CPU whose INT8 arithmetic
    differs (VNNI against not), else None."""
    if built_for in ("", "other") or checked_on in ("", "other"):
        return None
    built, here = Isa(built_for), Isa(checked_on)
    if built.vnni == here.vnni:
        return None
    return (f"this INT8 artifact was built for {built_for} ({built.int8_arithmetic}) and is checked on "
            f"{checked_on} ({here.int8_arithmetic}): the verdict is this machine's")


def manifest_section(requested: str) -> dict[str, object]:
    """The manifest's `isa`: the ISA the artifact is built for and the machine that built it."""
    return {"deployment": deployment_isa(requested).name, "build_machine": host_description()}


def check_section(precision: str, built_for: str | None) -> dict[str, object]:
    """A check report's `isa`: the checking machine, the ISA the artifact was built for, and a note
    when INT8 arithmetic differs between the two."""
    here = host_description()
    note = arithmetic_mismatch(built_for or "", str(here["isa"])) if precision == "int8" else None
    return {"checked_on": here, "built_for": built_for, "note": note}
