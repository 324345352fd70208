"""federation.device (issue 14 item 5): resolution rules, the refusal of a missing device before
anything is written, device: cpu identical to the default, generators and checkpoints by device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import load_benchmark

from fedlora_cli.cli import app
from fedlora_cli.device import device_problems, model_device, resolve_device, seeded_generator
from fedlora_cli.errors import InputError
from fedlora_cli.federation.engine import TIMING_KEYS
from fedlora_cli.federation.precision import resolve_precision
from fedlora_cli.federation.run_dir import RunDir
from fedlora_cli.privacy.client_level import noise_generator
from fedlora_cli.recipe import FederationConfig


def machine(monkeypatch, gpus: int = 0, mps: bool = False, bf16: bool = True) -> None:
    """Pretend this machine has ``gpus`` CUDA GPUs and (or not) an MPS device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(
    "setting, gpus, mps, expected",
    [
        ("auto", 0, False, "cpu"),
        ("auto", 0, True, "cpu"),  # mps only when asked
        ("auto", 2, True, "cuda:0"),
        ("cpu", 2, True, "cpu"),
        ("cuda", 1, False, "cuda:0"),
        ("cuda:1", 2, False, "cuda:1"),
        ("mps", 0, True, "mps"),
    ],
)
def test_resolution_rules(monkeypatch, setting, gpus, mps, expected):
    machine(monkeypatch, gpus, mps)
    assert resolve_device(setting) == torch.device(expected)
    assert device_problems(setting) == []


@pytest.mark.parametrize(
    "setting, gpus, mps, fix",
    [
        ("cuda", 0, False, "torch sees no CUDA GPU"),
        ("cuda:0", 0, True, "torch sees no CUDA GPU"),
        ("cuda:7", 1, False, "torch sees 1 CUDA GPU(s), cuda:0 to cuda:0; set federation.device=cuda:0"),
        ("mps", 2, False, "no usable MPS"),
    ],
)
def test_a_device_this_machine_lacks_is_an_input_error_naming_the_key(monkeypatch, setting, gpus, mps, fix):
    machine(monkeypatch, gpus, mps)
    with pytest.raises(InputError) as caught:
        resolve_device(setting)
    message = str(caught.value)
    assert f"federation.device={setting}" in message and fix in message
    assert device_problems(setting) == caught.value.problems


@pytest.mark.parametrize("setting", ["tpu", "gpu", "cuda:", "cuda:x", "CPU", " cpu"])
def test_an_unknown_device_is_a_recipe_error(setting):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="choose one of: auto, cpu, cuda, cuda:N"):
        FederationConfig(device=setting)


def test_secure_mode_is_refused_on_an_accelerator(monkeypatch):
    machine(monkeypatch, gpus=1)
    assert device_problems("cpu", secure_mode=True) == []
    (problem,) = device_problems("auto", secure_mode=True)
    assert "privacy.secure_mode=true" in problem and "federation.device=cpu" in problem
    assert device_problems("auto", secure_mode=False) == []


def test_auto_precision_follows_the_device(monkeypatch):
    machine(monkeypatch, gpus=1, bf16=True)
    assert resolve_precision("auto", torch.device("cuda:0")) == "bfloat16"
    assert resolve_precision("auto", torch.device("mps")) == "float32"
    assert resolve_precision("float32", torch.device("cuda:0")) == "float32"
    machine(monkeypatch, gpus=1, bf16=False)  # pre-Ampere GPUs
    assert resolve_precision("auto", torch.device("cuda:0")) == "float32"


def test_generators_live_on_the_device_and_keep_the_cpu_stream():
    """On the CPU the seeded streams are those of ``torch.Generator().manual_seed`` (what runs
    used before devices existed): resumed and old runs stay bit-identical."""
    reference = torch.rand(5, generator=torch.Generator().manual_seed(11))
    assert torch.equal(torch.rand(5, generator=seeded_generator(11)), reference)
    assert torch.equal(torch.rand(5, generator=noise_generator(False, 11, torch.device("cpu"))), reference)
    assert seeded_generator(11, "cpu").device == torch.device("cpu")


# --------------------------------------------------------------------------- through the CLI
def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("setting, named", [("cuda", "torch sees no CUDA GPU"), ("tpu", "unknown device 'tpu'")])
def test_train_refuses_a_missing_device_with_exit_2_and_writes_nothing(monkeypatch, tiny_recipe, setting, named):
    machine(monkeypatch, gpus=0)
    runs = tiny_recipe.parent / "runs"
    result = invoke("train", str(tiny_recipe), f"federation.device={setting}", "--json")
    assert result.exit_code == 2, result.output
    assert "federation.device" in result.stderr and named in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert not runs.exists()


def test_recipes_validate_reports_a_missing_device(monkeypatch, tiny_recipe):
    machine(monkeypatch, gpus=0)
    result = invoke("recipes", "validate", str(tiny_recipe), "federation.device=cuda:1", "--json")
    assert result.exit_code == 2
    (report,) = json.loads(result.stdout)
    assert any(p.startswith("federation.device=cuda:1: torch sees no CUDA GPU") for p in report["problems"])


def read_run(path: Path) -> tuple[list[dict], dict, dict]:
    metrics = [
        {k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
        for line in (path / "metrics.jsonl").read_text().splitlines()
    ]
    summary = {k: v for k, v in json.loads((path / "summary.json").read_text()).items() if k not in (*TIMING_KEYS, "run_dir")}
    return metrics, summary, load_file(str(path / "adapter" / "adapter_model.safetensors"))


def test_device_cpu_trains_bit_identically_to_the_default(tiny_recipe):
    """DP (sample level) on the tiny recipe: ``federation.device=cpu`` and the default give the
    same metrics, summary and adapter, bit for bit."""
    runs = tiny_recipe.parent / "runs"
    default = invoke("train", str(tiny_recipe), "--out", str(runs / "default"), "--json")
    cpu = invoke("train", str(tiny_recipe), "federation.device=cpu", "--out", str(runs / "cpu"), "--json")
    assert default.exit_code == 0 and cpu.exit_code == 0, default.output + cpu.output
    (m1, s1, a1), (m2, s2, a2) = read_run(runs / "default"), read_run(runs / "cpu")
    assert m1 == m2 and s1 == s2 and s1["device"] == "cpu"
    assert a1.keys() == a2.keys() and all(torch.equal(a1[k], a2[k]) for k in a1)


# --------------------------------------------------------------------------- checkpoints
def test_checkpoints_hold_cpu_tensors_and_load_onto_the_asked_device(tmp_path, monkeypatch):
    import fedlora_cli.federation.run_dir as run_dir_module

    asked = []
    real_load_file = run_dir_module.load_file

    def recording_load_file(path, device="cpu"):
        asked.append(device)
        return real_load_file(path, device="cpu")  # the only device this machine has

    monkeypatch.setattr(run_dir_module, "load_file", recording_load_file)
    run = RunDir.at(tmp_path / "run")
    saved = {"w": torch.arange(6.0).reshape(2, 3).t(), "b": torch.ones(3, requires_grad=True)}  # non-contiguous, grad
    run.save_checkpoint(saved, {"rounds_done": 1})
    tensors, meta = run.load_checkpoint(torch.device("cuda", 0))
    assert asked == ["cuda:0"]  # safetensors' map_location
    assert meta["rounds_done"] == 1 and all(torch.equal(tensors[k], saved[k].detach()) for k in saved)
    assert all(t.device == torch.device("cpu") for t in real_load_file(str(run.checkpoint_path / meta["state_file"])).values())


def test_resume_loads_the_checkpoint_onto_the_trainers_device(tiny_recipe, monkeypatch):
    """A run resumes onto the device its model is on (``FederatedRun.resume`` → ``load_checkpoint``)."""
    from fedlora_cli.federation.engine import FederatedRun
    from fedlora_cli.federation.experiment import build_experiment
    from fedlora_cli.report.console import JsonLinesReporter
    from fedlora_cli.validate import check_recipe

    checked = check_recipe(str(tiny_recipe), ["federation.rounds=1"])
    experiment = build_experiment(checked.recipe, checked.train, checked.test, checked.client_indices)
    assert model_device(experiment.model) == torch.device("cpu")
    run = FederatedRun(experiment, RunDir.at(tiny_recipe.parent / "run"), JsonLinesReporter())
    assert run.device == torch.device("cpu")
    asked = []
    monkeypatch.setattr(RunDir, "load_checkpoint", lambda self, device="cpu": asked.append(device))
    run.resume()
    assert asked == [torch.device("cpu")]



# --------------------------------------------------------------------------- generators by device
ELSEWHERE = torch.device("cuda", 3)  # a device the trainer claims; the spies stop before it is used


class ReachedElsewhere(Exception):
    """Raised by a spy once a generator or a batch is asked for on ``ELSEWHERE``."""


def spy_noise_generator(monkeypatch, module, elsewhere: torch.device = ELSEWHERE) -> list[torch.device]:
    """Record the device of every ``noise_generator`` call in ``module``; stop at ``elsewhere``."""
    asked = []
    real = module.noise_generator

    def spy(secure_mode, seed, device="cpu"):
        asked.append(torch.device(device))
        if torch.device(device) == elsewhere:
            raise ReachedElsewhere
        return real(secure_mode, seed, device)

    monkeypatch.setattr(module, "noise_generator", spy)
    return asked


def tiny_run(tiny_recipe, overrides: list[str]):
    from fedlora_cli.federation.engine import FederatedRun
    from fedlora_cli.federation.experiment import build_experiment
    from fedlora_cli.report.console import JsonLinesReporter
    from fedlora_cli.validate import check_recipe

    checked = check_recipe(str(tiny_recipe), overrides)
    experiment = build_experiment(checked.recipe, checked.train, checked.test, checked.client_indices)
    return FederatedRun(experiment, RunDir.at(tiny_recipe.parent / "run"), JsonLinesReporter())


def test_dp_sgd_noise_is_drawn_on_the_trainers_device_and_batches_on_the_cpu(tiny_recipe, monkeypatch):
    import fedlora_cli.federation.client as client_module

    run = tiny_run(tiny_recipe, [])
    asked = spy_noise_generator(monkeypatch, client_module)
    trainer = run.clients.trainer
    trainer.device = ELSEWHERE
    with pytest.raises(ReachedElsewhere):
        trainer.train(run.exp.client_data[0], 1, seed=0, noise=run.policy.noise_for(0))
    assert asked == [torch.device("cpu"), ELSEWHERE]  # Poisson batches, then the DPOptimizer's noise



def test_training_batches_go_to_the_trainers_device(tiny_recipe, monkeypatch):
    from fedlora_cli.data.batching import TokenizedDataset

    asked = []

    def spy(self, indices, device="cpu"):
        asked.append(torch.device(device))
        raise ReachedElsewhere

    run = tiny_run(tiny_recipe, ["privacy.level=none"])
    monkeypatch.setattr(TokenizedDataset, "batch", spy)
    trainer = run.clients.trainer
    trainer.device = ELSEWHERE
    with pytest.raises(ReachedElsewhere):
        trainer.train(run.exp.client_data[0], 1, seed=0, noise=None)
    assert asked == [ELSEWHERE]


def test_client_level_server_noise_is_drawn_on_the_global_adapters_device(tiny_recipe, monkeypatch):
    """The server's DP-FedAvg noise is drawn where the global adapter lives (here the ``meta``
    device stands in for a GPU: the spy stops before any tensor is touched)."""
    import fedlora_cli.privacy.policy as policy_module

    run = tiny_run(tiny_recipe, ["privacy.level=client", "method.name=fedavg", "federation.clients_per_round=4"])
    state = {key: value.to("meta") for key, value in run.global_state.items()}
    asked = spy_noise_generator(monkeypatch, policy_module, torch.device("meta"))
    with pytest.raises(ReachedElsewhere):
        run.policy.aggregate(run.method, state, [state, state], torch.tensor([0.5, 0.5]), 0)
    assert asked == [torch.device("meta")]


# --------------------------------------------------------------------------- benchmarks/gpu_check.py
def gpu_check():
    return load_benchmark("gpu_check")


def test_gpu_check_without_cuda_exits_2_with_the_way_out(monkeypatch, tiny_recipe, capsys):
    machine(monkeypatch, gpus=0)
    assert gpu_check().main([str(tiny_recipe)]) == 2
    err = capsys.readouterr().err
    assert "torch sees no CUDA GPU" in err and "--device cpu" in err


def test_gpu_check_dry_run_on_the_cpu_trains_resumes_and_measures(tiny_recipe, capsys):
    args = [str(tiny_recipe), "federation.local_steps=2", "--device", "cpu", "--rounds", "2", "--no-deterministic"]
    code = gpu_check().main(args)
    out = capsys.readouterr().out
    report = json.loads(out[out.index("\n{") + 1 :])  # the JSON report follows the progress lines
    assert code == 0 and report["verdict"] == "bit-identical", report
    assert report["resume_check"]["adapter_max_abs_difference"] == 0.0
    assert report["resumed"]["first_part"]["examples"] > 0 and report["resumed"]["second_part"]["examples"] > 0
    for run in ("straight", "no_dp"):
        assert report[run]["tokens"] > report[run]["examples"] > 0 and report[run]["peak_gpu_memory_mb"] is None
    assert report["dp_overhead"] > -1
