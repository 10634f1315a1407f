"""The CPU instruction set an INT8 artifact is built for (hubert_export/isa.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hubert_export.isa import (Isa, arithmetic_mismatch, capped, check_section, cpu_flags, host_isa, isa_from_flags,
                               resolve_overflow_fix)

# /proc/cpuinfo flag sets of CPUs users have (the INT8-relevant part).
ZEN2 = {"avx", "avx2", "fma", "f16c"}  # AMD EPYC Rome / Milan: no AVX-512
SKYLAKE_SP = ZEN2 | {"avx512f", "avx512bw"}  # AVX-512 without VNNI
CASCADE_LAKE = SKYLAKE_SP | {"avx512_vnni"}
ZEN4 = CASCADE_LAKE | {"avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx_tile", "amx_int8", "amx_bf16"}
ALDER_LAKE = ZEN2 | {"avx_vnni"}  # AVX-VNNI on 256-bit registers, no AVX-512


@pytest.mark.parametrize(("flags", "name", "vnni", "bf16"), [
    (ZEN2, "x86-avx2", False, False),
    (ALDER_LAKE, "x86-avx2-vnni", True, False),
    (SKYLAKE_SP, "x86-avx512", False, False),
    (CASCADE_LAKE, "x86-avx512-vnni", True, False),
    (ZEN4, "x86-avx512-bf16", True, True),
    (SAPPHIRE_RAPIDS, "x86-amx", True, True),
])
def test_flags_name_the_isa_and_its_int8_arithmetic(flags, name, vnni, bf16):
    isa = isa_from_flags(frozenset(flags))
    assert (isa.name, isa.vnni, isa.bf16) == (name, vnni, bf16)
    # 7-bit weights exactly where u8 x s8 pairs can saturate their 16-bit sum
    assert isa.overflow_fix == ("first_layer" if vnni else "enable")


def test_arm64_is_exact_and_old_x86_is_other():
    assert isa_from_flags(frozenset(), "aarch64") == Isa("arm64") and Isa("arm64").vnni
    assert isa_from_flags(frozenset({"sse4_2", "avx"})).name == "other"


@pytest.mark.parametrize(("cap", "expected"), [
    ("AVX2", "x86-avx2"), ("avx512_core", "x86-avx512"), ("AVX512_CORE_VNNI", "x86-avx512-vnni"),
    ("AVX512_CORE_AMX", "x86-avx512-bf16"),  # a cap above the CPU changes nothing
    ("", "x86-avx512-bf16"), ("NOT_AN_ISA", "x86-avx512-bf16"),
])
def test_onednn_cap_lowers_the_isa(cap, expected):
    assert capped(Isa("x86-avx512-bf16"), cap).name == expected


def test_host_isa_follows_the_cpu_flags_and_the_onednn_cap(monkeypatch):
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    found = re.search(r"^flags\s*:(.*)$", text, re.M)
    if found is None:
        pytest.skip("no x86 /proc/cpuinfo flags on this machine")
    flags = set(found.group(1).split())
    assert set(cpu_flags()) <= flags and ("avx2" in flags) == ("avx2" in cpu_flags())
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert host_isa().vnni == bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    if "avx2" in flags:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
        assert host_isa().name == "x86-avx2"


def test_overflow_fix_auto_follows_the_deployment_isa():
    assert resolve_overflow_fix("auto", "x86-avx2") == "enable"
    assert resolve_overflow_fix("auto", "x86-avx512") == "enable"
    assert resolve_overflow_fix("auto", "x86-avx512-vnni") == "first_layer"
    assert resolve_overflow_fix("auto", "arm64") == "first_layer"
    assert resolve_overflow_fix("disable", "x86-avx2") == "disable"  # what the recipe says wins


def test_a_check_on_other_int8_arithmetic_says_so():
    assert arithmetic_mismatch("x86-avx512-vnni", "x86-avx512-bf16") is None
    assert arithmetic_mismatch("x86-avx2", "x86-avx512") is None  # both saturate
    note = arithmetic_mismatch("x86-avx512-vnni", "x86-avx2")
    assert "built for x86-avx512-vnni" in note and "verdict is this machine's" in note
    other = "x86-avx2" if host_isa().vnni else "x86-avx512-vnni"
    assert check_section("int8", other)["note"] and check_section("fp32", other)["note"] is None
