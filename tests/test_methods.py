"""Every aggregation method on real peft modules of the tiny BERT (query, value and the
non-square 48×32 ``intermediate.dense``), three clients of different sizes, random non-zero
factors: the effective weight after aggregation is what DESIGN.md section 2 says."""

from __future__ import annotations

import math

import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from fedlora_cli.errors import InputError
from fedlora_cli.federation.client import classification_loss
from fedlora_cli.federation.experiment import build_model
from fedlora_cli.methods import METHODS
from fedlora_cli.methods.fedex import fedex_residual
from fedlora_cli.methods.fedsvd import refactorize, refactorize_dense
from fedlora_cli.models import adapter_state, is_head_parameter, load_adapter_state
from fedlora_cli.recipe import Recipe

SIZES = [5, 17, 40]
WEIGHTS = torch.tensor(SIZES, dtype=torch.float64) / sum(SIZES)
INEXACT = ["fedavg"]  # tested against its own equation below
EXACT = sorted(set(METHODS) - set(INEXACT))  # every other registered method, a new one too
RANK = 4


def make(tiny_model_dir: str, method: str, train_head: bool = True, **options):
    recipe = Recipe.model_validate(
        {
            "model": {
                "name": tiny_model_dir,
                "rank": RANK,
                "alpha": 8,
                "target_modules": ["query", "value", "intermediate.dense"],
                "train_head": train_head,
            },
            "method": {"name": method, **options},
            "federation": {"server_optimizer": "none"},  # the method's own equation, no server step
            "privacy": {"level": "none"},
        }
    )
    model, m = build_model(recipe, num_labels=3)
    model.eval()
    return model, m


def effective_weight(module) -> torch.Tensor:
    """The layer's effective out×in weight, read off the real peft forward pass on the identity
    (``x·W_effᵀ + b``, whatever layout the base layer stores: GPT-2's ``Conv1D`` holds in×out)."""
    bias = module.layer.get_base_layer().bias
    with torch.no_grad():
        out = module.layer(torch.eye(module.layer.in_features))
    return (out - (0 if bias is None else bias)).T.double()


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def client_round(model, method, global_state, generator):
    """Random non-zero trained tensors for each client, and each client's effective weights."""
    trainable = [key for key in global_state if method.is_trainable(key)]
    uploads, effective = [], []
    for _ in SIZES:
        upload = {key: torch.randn(global_state[key].shape, generator=generator) * 0.5 for key in trainable}
        load_adapter_state(model, {**global_state, **upload})
        effective.append({m.name: effective_weight(m) for m in method.modules})
        uploads.append(upload)
    return uploads, effective


def weighted(values: list[torch.Tensor]) -> torch.Tensor:
    return sum(float(p) * v for p, v in zip(WEIGHTS, values))


def test_targets_include_a_non_square_layer(tiny_model_dir):
    _, method = make(tiny_model_dir, "fedavg")
    shapes = {tuple(m.base_weight.shape) for m in method.modules}
    assert (48, 32) in shapes and (32, 32) in shapes
    assert len(method.modules) == 6


@pytest.mark.parametrize("name", EXACT)
def test_exact_methods_give_the_weighted_mean_of_client_effective_weights(tiny_model_dir, name):
    model, method = make(tiny_model_dir, name)
    generator = torch.Generator().manual_seed(1)
    state = adapter_state(model)
    for round_index in range(2):  # the second round starts from changed base weights (fedex, flora)
        uploads, effective = client_round(model, method, state, generator)
        state = method.aggregate(state, uploads, WEIGHTS, round_index)
        load_adapter_state(model, state)
        for module in method.modules:
            expected = weighted([e[module.name] for e in effective])
            assert rel_err(effective_weight(module), expected) < 1e-5, (name, round_index, module.name)
        heads = [key for key in uploads[0] if is_head_parameter(key)]
        assert heads, "train_head: the head is trained and uploaded"
        for key in heads:
            torch.testing.assert_close(state[key], weighted([u[key].double() for u in uploads]).float())


def test_fedavg_is_the_product_of_the_means_and_not_exact(tiny_model_dir):
    model, method = make(tiny_model_dir, "fedavg")
    state = adapter_state(model)
    base = {m.name: m.base_weight.detach().double().clone() for m in method.modules}
    uploads, effective = client_round(model, method, state, torch.Generator().manual_seed(2))
    state = method.aggregate(state, uploads, WEIGHTS, 0)
    load_adapter_state(model, state)
    for module in method.modules:
        b_mean = weighted([u[module.b_key].double() for u in uploads])
        a_mean = weighted([u[module.a_key].double() for u in uploads])
        product = base[module.name] + module.scaling * b_mean @ a_mean
        actual = effective_weight(module)
        assert rel_err(actual, product) < 1e-5
        assert rel_err(actual, weighted([e[module.name] for e in effective])) > 1e-2
        assert torch.equal(module.base_weight.double(), base[module.name])


def test_ffa_never_changes_a_and_trains_and_sends_only_b(tiny_model_dir):
    model, method = make(tiny_model_dir, "ffa", train_head=False)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_B." in name for name in trainable)
    state = adapter_state(model)
    a0 = {m.a_key: state[m.a_key].clone() for m in method.modules}
    assert set(method.broadcast_keys(state)) == {m.b_key for m in method.modules}
    generator = torch.Generator().manual_seed(3)
    for round_index in range(3):
        uploads, _ = client_round(model, method, state, generator)
        assert set(uploads[0]) == {m.b_key for m in method.modules}
        state = method.aggregate(state, uploads, WEIGHTS, round_index)
        for module in method.modules:
            assert torch.equal(state[module.a_key], a0[module.a_key])
            torch.testing.assert_close(state[module.b_key], weighted([u[module.b_key].double() for u in uploads]).float())


def test_fedsvd_refactorizes_exactly_into_orthonormal_a(tiny_model_dir):
    model, method = make(tiny_model_dir, "fedsvd")
    state = adapter_state(model)
    a_prev = {m.a_key: state[m.a_key].clone() for m in method.modules}
    uploads, _ = client_round(model, method, state, torch.Generator().manual_seed(4))
    assert not any(".lora_A." in key for key in uploads[0])
    new = method.aggregate(state, uploads, WEIGHTS, 0)
    for module in method.modules:
        b_avg = weighted([u[module.b_key].double() for u in uploads])
        expected = b_avg @ a_prev[module.a_key].double()
        a_new = new[module.a_key].double()
        assert rel_err(new[module.b_key].double() @ a_new, expected) < 1e-5
        torch.testing.assert_close(a_new @ a_new.T, torch.eye(RANK, dtype=torch.float64), atol=1e-5, rtol=0)
        assert not torch.allclose(a_new, a_prev[module.a_key].double(), atol=1e-3)


def test_fedsvd_qr_path_equals_the_dense_svd(tiny_model_dir):
    generator = torch.Generator().manual_seed(5)
    for out, inp in [(48, 32), (32, 48), (64, 64)]:
        b, a = torch.randn(out, RANK, generator=generator), torch.randn(RANK, inp, generator=generator)
        b_qr, a_qr = refactorize(b, a)
        b_dense, a_dense = refactorize_dense(b, a)
        signs = torch.sign((a_qr * a_dense).sum(dim=1))  # singular vectors are unique up to sign
        torch.testing.assert_close(a_qr * signs[:, None], a_dense, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b_qr * signs, b_dense, atol=1e-5, rtol=1e-5)
        assert rel_err((b_qr @ a_qr).double(), (b @ a).double()) < 1e-5

    states = {}
    for mode in ("qr", "dense"):
        model, method = make(tiny_model_dir, "fedsvd", svd_mode=mode)
        state = adapter_state(model)
        uploads, _ = client_round(model, method, state, torch.Generator().manual_seed(6))
        states[mode] = (method.modules, method.aggregate(state, uploads, WEIGHTS, 0))
    modules, qr_state = states["qr"]
    dense_state = states["dense"][1]
    for module in modules:
        product_qr = qr_state[module.b_key].double() @ qr_state[module.a_key].double()
        product_dense = dense_state[module.b_key].double() @ dense_state[module.a_key].double()
        assert rel_err(product_qr, product_dense) < 1e-5


def test_fedsvd_keeps_a_when_no_client_has_moved_b(tiny_model_dir):
    """While ``lr_schedule: probe_then_cosine`` freezes the factors, every client uploads the zero
    B it got. The SVD of the zero product would hand A the first r coordinate axes; A must stay."""
    model, method = make(tiny_model_dir, "fedsvd")
    state = adapter_state(model)
    uploads, _ = client_round(model, method, state, torch.Generator().manual_seed(8))
    for upload in uploads:  # the head moved, the factors did not
        upload.update({m.b_key: torch.zeros_like(state[m.b_key]) for m in method.modules})
    new = method.aggregate(state, uploads, WEIGHTS, 0)
    for module in method.modules:
        assert torch.equal(new[module.a_key], state[module.a_key])
        assert not new[module.b_key].any()
    head = [key for key in state if is_head_parameter(key)]
    assert head and any(not torch.equal(new[key], state[key]) for key in head)


@pytest.mark.parametrize(("period", "refactorized_rounds"), [(1, [0, 1, 2, 3]), (2, [1, 3]), (0, [])])
def test_fedsvd_svd_period(tiny_model_dir, period, refactorized_rounds):
    model, method = make(tiny_model_dir, "fedsvd", svd_period=period, train_head=False)
    state = adapter_state(model)
    generator = torch.Generator().manual_seed(7)
    changed = []
    for round_index in range(4):
        a_before = state[method.modules[0].a_key].clone()
        uploads, _ = client_round(model, method, state, generator)
        state = method.aggregate(state, uploads, WEIGHTS, round_index)
        if not torch.equal(state[method.modules[0].a_key], a_before):
            changed.append(round_index)
    assert changed == refactorized_rounds
    a_keys = {m.a_key for m in method.modules}
    assert a_keys.issubset(method.broadcast_keys(state)) == (period > 0)


def test_fedex_folds_the_untransposed_residual_into_the_base(tiny_model_dir):
    model, method = make(tiny_model_dir, "fedex")
    state = adapter_state(model)
    before = {m.name: m.base_weight.detach().double().clone() for m in method.modules}
    uploads, _ = client_round(model, method, state, torch.Generator().manual_seed(8))
    method.aggregate(state, uploads, WEIGHTS, 0)
    for module in method.modules:
        bs, as_ = [u[module.b_key] for u in uploads], [u[module.a_key] for u in uploads]
        residual = fedex_residual(bs, as_, WEIGHTS)
        assert residual.shape == module.base_weight.shape
        exact = weighted([b.double() @ a.double() for b, a in zip(bs, as_)])
        product = weighted([b.double() for b in bs]) @ weighted([a.double() for a in as_])
        assert rel_err(residual, exact - product) < 1e-12
        delta = module.base_weight.detach().double() - before[module.name]
        assert rel_err(delta, module.scaling * residual) < 1e-5


def test_flora_resets_the_adapter_deterministically(tiny_model_dir):
    results = []
    for _ in range(2):
        model, method = make(tiny_model_dir, "flora")
        state = adapter_state(model)
        uploads, _ = client_round(model, method, state, torch.Generator().manual_seed(9))
        new = method.aggregate(state, uploads, WEIGHTS, 3)
        results.append((method, state, new))
    (method, old, new), (other_method, _, again) = results
    for module, other in zip(method.modules, other_method.modules):
        a_new = new[module.a_key]
        assert torch.count_nonzero(new[module.b_key]) == 0
        assert torch.equal(a_new, again[module.a_key]) and torch.equal(module.base_weight, other.base_weight)
        assert not torch.equal(a_new, old[module.a_key])
        bound = 1 / math.sqrt(a_new.shape[1])  # peft's kaiming_uniform_(a=√5) bound
        assert a_new.abs().max() <= bound and a_new.abs().max() > 0.8 * bound
    next_round = method.aggregate(new, uploads, WEIGHTS, 4)
    assert not any(torch.equal(next_round[m.a_key], new[m.a_key]) for m in method.modules)


def test_fedsb_trains_only_r_and_exports_standard_lora(tiny_model_dir):
    model, method = make(tiny_model_dir, "fedsb", train_head=False)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == len(method.modules)
    assert all(p.shape == (RANK, RANK) for p in trainable.values())
    for module in method.modules:
        a = module.layer.lora_A["default"].weight.double()
        b = module.layer.lora_B["default"][1].weight.double()
        torch.testing.assert_close(a @ a.T, torch.eye(RANK, dtype=torch.float64), atol=1e-6, rtol=0)
        torch.testing.assert_close(b.T @ b, torch.eye(RANK, dtype=torch.float64), atol=1e-6, rtol=0)
        base = module.layer.get_base_layer().weight.double()
        torch.testing.assert_close(effective_weight(module), base, atol=1e-6, rtol=0)  # R = 0

    state = adapter_state(model)
    uploads, _ = client_round(model, method, state, torch.Generator().manual_seed(10))
    load_adapter_state(model, method.aggregate(state, uploads, WEIGHTS, 0))
    before = {m.name: effective_weight(m) for m in method.modules}
    with method.exported():
        keys = list(model.state_dict())
        assert not any(".lora_B.default.0." in key or ".lora_B.default.1." in key for key in keys)
        for module in method.modules:
            assert type(module.layer.lora_B["default"]) is nn.Linear
            assert rel_err(effective_weight(module), before[module.name]) < 1e-6
    for module in method.modules:
        assert isinstance(module.layer.lora_B["default"], nn.Sequential)
        torch.testing.assert_close(effective_weight(module), before[module.name], atol=0, rtol=0)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == set(trainable)


def test_fedsb_r_gets_per_sample_gradients_from_opacus(tiny_model_dir):
    model, method = make(tiny_model_dir, "fedsb")
    model.train()
    wrapped = GradSampleModule(model, loss_reduction="mean")
    state = adapter_state(model)
    load_adapter_state(model, {k: torch.randn_like(v) if method.is_trainable(k) else v for k, v in state.items()})
    batch = {
        "input_ids": torch.randint(1000, 2000, (5, 7)),
        "attention_mask": torch.ones(5, 7, dtype=torch.long),
        "labels": torch.tensor([0, 1, 2, 0, 1]),
    }
    classification_loss(wrapped, batch).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad_sample.shape == (5, *p.shape), name
            assert p.grad_sample.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    wrapped._close()


def test_fedsb_refuses_a_rank_above_the_layer_size(tiny_model_dir):
    recipe = Recipe.model_validate(
        {"model": {"name": tiny_model_dir, "rank": 40, "target_modules": ["query"]}, "method": {"name": "fedsb"}}
    )
    with pytest.raises(InputError, match="model.rank"):
        build_model(recipe, num_labels=3)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_owns_its_documented_options(name):
    from fedlora_cli.methods import REGISTRY
    from fedlora_cli.recipe import parse_recipe

    options = REGISTRY.options[name]
    assert parse_recipe({"method": {"name": name}}).method == options()
    for field, info in options.model_fields.items():
        assert field == "name" or info.description, f"method.{field} of {name} has no description"
    foreign = {key for other in METHODS if other != name for key in REGISTRY.options[other].model_fields} - set(options.model_fields)
    for key in foreign:
        with pytest.raises(InputError, match=rf"method\.{key}: not an option of method {name} but of"):
            parse_recipe({"method": {"name": name, key: REGISTRY.options[REGISTRY.owners(key)[0]]().model_dump()[key]}})


def test_fedsb_refuses_the_data_driven_init():
    from fedlora_cli.recipe import parse_recipe

    with pytest.raises(InputError, match=r"method\.fedsb_init.*privacy.*fedsb_init=random"):
        parse_recipe({"method": {"name": "fedsb", "fedsb_init": "gradient_svd"}})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_train_head_flag_controls_the_head_for_every_method(tiny_model_dir, name):
    for train_head in (True, False):
        model, method = make(tiny_model_dir, name, train_head=train_head)
        head = [p.requires_grad for n, p in model.named_parameters() if is_head_parameter(n)]
        assert head and all(flag == train_head for flag in head)
        broadcast = method.broadcast_keys(adapter_state(model))
        assert any(is_head_parameter(key) for key in broadcast) == train_head


def test_methods_that_need_each_clients_factors_declare_it():
    """fedex's residual and flora's stack read every client's upload: client-level DP must refuse them."""
    assert {name for name, cls in METHODS.items() if cls.uses_raw_uploads} == {"fedex", "flora"}


def test_restore_base_weights_checks_everything_before_copying(tiny_model_dir):
    from fedlora_cli.methods.base import restore_base_weights

    _, method = make(tiny_model_dir, "fedex")
    first, second = method.modules[0], method.modules[-1]
    before = {m.name: m.base_weight.detach().clone() for m in method.modules}
    good = torch.randn(first.base_weight.shape)
    wrong = torch.zeros(3, 3)
    for bad in ({first.name: good, second.name: wrong}, {first.name: good, "nowhere.dense": wrong}):
        with pytest.raises(InputError) as info:
            restore_base_weights(method.modules, bad, "saved.safetensors")
        assert str(info.value).startswith("saved.safetensors: ") and "different runs" in str(info.value)
        assert all(torch.equal(m.base_weight, before[m.name]) for m in method.modules)  # nothing half-written
    restore_base_weights(method.modules, {first.name: good}, "saved.safetensors")
    assert torch.equal(first.base_weight, good) and torch.equal(second.base_weight, before[second.name])


# ------------------------------------------------------------------------------ decoders
DECODER_TARGETS = {"gpt2": ["c_attn", "c_proj"], "gpt2-square": ["attn.c_proj"], "llama": ["q_proj", "v_proj"]}


def make_decoder(kind: str, method_name: str):
    """A tiny causal LM built from a config with a peft LoRA adapter, and the method on its modules.

    GPT-2's ``c_attn`` (32→96) and ``c_proj`` (32→32, 128→32) are ``Conv1D`` layers storing their
    weight in×out (peft ``fan_in_fan_out=True``); Llama's ``q_proj`` (32→32) and ``v_proj``
    (32→16) are plain ``nn.Linear`` (out×in). ``gpt2-square`` adapts only the square
    ``attn.c_proj``, where a missing transpose is silent rather than a shape error.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from fedlora_cli.models import lora_modules

    torch.manual_seed(0)
    if kind.startswith("gpt2"):
        base = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2))
    else:
        config = LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16,
        )
        base = LlamaForCausalLM(config)
    lora = LoraConfig(
        task_type="CAUSAL_LM", r=RANK, lora_alpha=8, target_modules=DECODER_TARGETS[kind], fan_in_fan_out=kind.startswith("gpt2")
    )
    model = get_peft_model(base, lora)
    recipe = Recipe.model_validate(
        {
            "model": {"name": kind, "rank": RANK, "alpha": 8, "target_modules": DECODER_TARGETS[kind], "train_head": False},
            "method": {"name": method_name},
            "federation": {"server_optimizer": "none"},  # the method's own equation, no server step
            "privacy": {"level": "none"},
        }
    )
    method = METHODS[method_name](recipe, lora_modules(model))
    method.setup()
    for name, param in model.named_parameters():
        param.requires_grad_(method.is_trainable(name))
    model.eval()
    return model, method


def out_by_in(module, weight: torch.Tensor) -> torch.Tensor:
    """A base weight as out×in (``Conv1D`` computes ``x·W + b`` with W in×out)."""
    return weight.T if module.layer.fan_in_fan_out else weight


def merged_reference_logits(model, method, merged: dict[str, torch.Tensor], input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of the base model whose adapted weights are replaced by ``merged`` (out×in), adapter off."""
    saved = {m.name: m.base_weight.detach().clone() for m in method.modules}
    with torch.no_grad():
        for module in method.modules:
            module.base_weight.copy_(out_by_in(module, merged[module.name]).to(module.base_weight.dtype))
        with model.disable_adapter():
            logits = model(input_ids=input_ids).logits
        for module in method.modules:
            module.base_weight.copy_(saved[module.name])
    return logits


@pytest.mark.parametrize("kind", sorted(DECODER_TARGETS))
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_on_decoders_including_transposed_conv1d_weights(kind, name):
    """Effective weights after aggregation follow DESIGN.md section 2 on real peft decoder layers;
    on GPT-2 fedex and flora must write their out×in update transposed into the in×out weight.
    The whole model's forward equals the base model carrying those merged weights, also in the
    exported (saved) form."""
    model, method = make_decoder(kind, name)
    assert {m.layer.fan_in_fan_out for m in method.modules} == {kind.startswith("gpt2")}
    shapes = [tuple(out_by_in(m, m.base_weight).shape) for m in method.modules]
    assert any(o == i for o, i in shapes) and any(o != i for o, i in shapes) == (kind != "gpt2-square")
    generator = torch.Generator().manual_seed(11)
    input_ids = torch.randint(0, 64, (2, 8), generator=generator)
    state = adapter_state(model)
    for round_index in range(2):  # the second round starts from changed base weights (fedex, flora)
        uploads, effective = client_round(model, method, state, generator)
        base = {m.name: out_by_in(m, m.base_weight.detach().double()) for m in method.modules}
        state = method.aggregate(state, uploads, WEIGHTS, round_index)
        load_adapter_state(model, state)
        expected = {}
        for module in method.modules:
            if name == "fedavg":  # inexact: the product of the means
                b_mean = weighted([u[module.b_key].double() for u in uploads])
                a_mean = weighted([u[module.a_key].double() for u in uploads])
                expected[module.name] = base[module.name] + module.scaling * b_mean @ a_mean
            else:
                expected[module.name] = weighted([e[module.name] for e in effective])
            assert rel_err(effective_weight(module), expected[module.name]) < 1e-5, (round_index, module.name)
        with torch.no_grad():
            logits = model(input_ids=input_ids).logits
        torch.testing.assert_close(logits, merged_reference_logits(model, method, expected, input_ids), atol=1e-5, rtol=1e-5)
    with method.exported(), torch.no_grad():  # the standard-LoRA form that is saved (fedsb: B ← B·R)
        torch.testing.assert_close(model(input_ids=input_ids).logits, logits, atol=1e-5, rtol=1e-5)
