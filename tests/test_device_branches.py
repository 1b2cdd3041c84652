"""Device branches of the chapters' own code, run with faked hardware.

The helpers' branches (which backend and GPU each rank takes, which device a chapter
picks) are tested in test_distributed.py and test_runtime.py; these are the branches a
chapter writes out itself, read from the chapter's source as the reader sees it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def chapter_function(chapter: str, name: str):
    """The function ``name`` as chapter ``chapter`` defines it, executed with only torch."""
    (path,) = (ROOT / "chapters").glob(f"{chapter}_*.py")
    source = path.read_text()
    (node,) = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == name]
    namespace: dict = {"torch": torch}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


@pytest.fixture
def autocast_choice():
    return chapter_function("08", "autocast_choice")


@pytest.mark.parametrize(
    ("native_bf16", "dtype"),
    [(True, torch.bfloat16), (False, torch.float16)],  # Ampere and later; T4 and older
)
def test_chapter_08_autocast_on_cuda_uses_bfloat16_only_where_native(
    monkeypatch, autocast_choice, native_bf16, dtype
):
    asked = []

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return native_bf16 or including_emulation  # emulated bfloat16 is everywhere

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    device, chosen, _ = autocast_choice(torch.device("cuda", 1))
    assert (device, chosen) == (torch.device("cuda", 1), dtype)
    assert asked == [False]  # emulation must not count


@pytest.mark.parametrize(("macos_14", "dtype"), [(True, torch.bfloat16), (False, torch.float16)])
def test_chapter_08_autocast_on_mps_stays_on_mps_in_bfloat16_from_macos_14(
    monkeypatch, autocast_choice, macos_14, dtype
):
    # PyTorch's MPS backend needs macOS 14 (pytorch/pytorch#163515), which computes bfloat16;
    # the chapter checks the version rather than assume it
    asked = []

    def is_macos_or_newer(major: int, minor: int) -> bool:
        asked.append((major, minor))
        return macos_14

    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", is_macos_or_newer)
    device, chosen, reason = autocast_choice(torch.device("mps"))
    assert (device, chosen) == (torch.device("mps"), dtype)
    assert asked == [(14, 0)]
    assert "CPU" not in reason


def test_chapter_08_autocast_on_the_cpu_is_bfloat16(autocast_choice):
    device, chosen, _ = autocast_choice(torch.device("cpu"))
    assert (device, chosen) == (torch.device("cpu"), torch.bfloat16)
