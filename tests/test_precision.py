"""federation.precision: auto resolves from the CPU's flags; bfloat16 reaches the forward pass only."""

from __future__ import annotations

import pytest

from fedlora_cli.federation.precision import native_bfloat16, resolve_precision
from fedlora_cli.recipe import FederationConfig

INTEL_SAPPHIRE_RAPIDS = "flags\t\t: fpu vme sse2 avx2 avx512f avx512bw amx_bf16 amx_tile avx512_bf16\n"
AMD_ZEN4 = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
AVX2_ONLY = "flags\t\t: fpu sse2 avx2 fma\n"
ARM_NEOVERSE_V1 = "Features\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize(
    "text, native",
    [(INTEL_SAPPHIRE_RAPIDS, True), (AMD_ZEN4, True), (AVX2_ONLY, False), (ARM_NEOVERSE_V1, True), ("", False)],
)
def test_native_bfloat16_reads_cpu_flags(tmp_path, text, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    assert native_bfloat16(cpuinfo) is native


def test_unreadable_cpuinfo_means_float32(tmp_path):
    assert native_bfloat16(tmp_path / "missing") is False


def test_auto_is_the_default_and_resolves_to_what_the_cpu_supports():
    assert FederationConfig().precision == "auto"
    expected = "bfloat16" if native_bfloat16() else "float32"
    assert resolve_precision("auto") == expected
    assert resolve_precision("float32") == "float32"
    assert resolve_precision("bfloat16") == "bfloat16"


def test_unknown_precision_is_a_recipe_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="auto"):
        FederationConfig(precision="fp16")
