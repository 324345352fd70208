"""privacy.secure_mode draws from torchcsprng or is refused, never a seeded fallback (issue 17 item 3).

The two behaviours are tested whatever is installed: torchcsprng is hidden (``sys.modules`` entry
None makes its import fail) or replaced by a recorder of what secure mode asks it for.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.errors import InputError
from fedlora_cli.privacy.client_level import noise_generator


@pytest.fixture
def no_csprng(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchcsprng", None)


@pytest.fixture
def recorded_csprng(monkeypatch) -> list[str]:
    """A torchcsprng whose random-device generator records the device it was opened on."""
    devices: list[str] = []

    def create_random_device_generator(device: str) -> torch.Generator:
        devices.append(device)
        return torch.Generator()

    fake = types.ModuleType("torchcsprng")
    fake.create_random_device_generator = create_random_device_generator
    monkeypatch.setitem(sys.modules, "torchcsprng", fake)
    return devices


def test_without_torchcsprng_secure_noise_is_refused_not_replaced(no_csprng):
    with pytest.raises(InputError, match="privacy.secure_mode=true needs torchcsprng.*privacy.secure_mode=false"):
        noise_generator(True, 7)
    seeded = noise_generator(False, 7)  # secure mode off: the seeded, reproducible generator
    assert torch.equal(torch.randn(3, generator=seeded), torch.randn(3, generator=torch.Generator().manual_seed(7)))


def test_secure_noise_comes_from_the_os_random_device(recorded_csprng):
    noise_generator(True, 7)
    assert recorded_csprng == ["/dev/urandom"]


@pytest.mark.parametrize("command", ["train", "validate"])
def test_a_secure_mode_recipe_is_refused_before_anything_is_written(tiny_recipe, tmp_path, no_csprng, command):
    out = tmp_path / "run"
    args = ["train", str(tiny_recipe), "privacy.secure_mode=true", "--out", str(out)]
    if command == "validate":
        tiny_recipe.write_text(tiny_recipe.read_text().replace("max_grad_norm: 1.0}", "max_grad_norm: 1.0, secure_mode: true}"))
        args = ["recipes", "validate", str(tiny_recipe)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "privacy.secure_mode=true needs torchcsprng" in result.stderr
    assert "Traceback" not in result.output and "secure_mode is on" not in result.output
    assert not out.exists()
