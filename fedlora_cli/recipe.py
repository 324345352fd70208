"""Recipe schema, YAML loading and ``key.sub=value`` overrides.

A recipe is a YAML document with the sections below. Every problem in a recipe is collected
and reported at once (:class:`~fedlora_cli.errors.InputError`), each naming the dotted key and
the fix; unknown keys get a did-you-mean.

The ``method`` and ``partition`` sections are built from the registries
(:mod:`fedlora_cli.registry`): each is a union of the registered option models, picked by
``method.name`` / ``partition.method``, so a method's or partitioner's options exist only when
it is chosen, and ``privacy.accountant`` is one of the registered accountants.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, Field, ValidationError, field_validator, model_validator

from fedlora_cli.bounded import expanded_size, short_repr
from fedlora_cli.data.partitioners import REGISTRY as PARTITIONERS
from fedlora_cli.device import check_device_setting
from fedlora_cli.errors import InputError
from fedlora_cli.federation.lr_schedule import SCHEDULES
from fedlora_cli.methods import REGISTRY as METHODS
from fedlora_cli.methods.server_optimizer import PER_COORDINATE
from fedlora_cli.privacy.accountants.base import ACCOUNTANTS, DEFAULT_ACCOUNTANT
from fedlora_cli.registry import Options as Section
from fedlora_cli.registry import Registry, did_you_mean as _did_you_mean
from fedlora_cli.seeding import MAX_SEED

DEFAULT_RECIPE = "default"
MAX_RECIPE_VALUES = 10_000  # a recipe has a few hundred; YAML aliases must not expand it past this
#: recipe sections whose options depend on a registered choice
CHOICES: dict[str, Registry] = {"method": METHODS, "partition": PARTITIONERS}
MethodChoice = METHODS.choice()
PartitionChoice = PARTITIONERS.choice()
AccountantName = Literal[tuple(ACCOUNTANTS)]
#: the fewest and most rounds ``federation.rounds: auto`` picks
AUTO_ROUNDS_RANGE = (8, 64)


def _whole_rounds_or_auto(value: Any) -> Any:
    if value == "auto" or (type(value) is int and value >= 1):
        return value
    raise ValueError("expected a whole number of rounds (1 or more) or auto")


Rounds = Annotated[int | Literal["auto"], BeforeValidator(_whole_rounds_or_auto)]


class ModelConfig(Section):
    """The pretrained model and its LoRA adapter."""

    name: str = Field("minilm", description="builtin alias (minilm), Hugging Face id or local directory")
    rank: int = Field(8, ge=1, description="LoRA rank r")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the adapter is scaled by alpha/r")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    base_dropout: float | None = Field(
        0.0,
        ge=0,
        lt=1,
        description="dropout inside the pretrained model while training (attention, hidden states, classifier "
        "input); 0 turns it off (under DP-SGD it only adds noise), null keeps the checkpoint's own",
    )
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"], min_length=1)
    train_head: bool = Field(True, description="train and average the classifier head (else frozen)")
    pooling: Literal["auto", "mean", "cls"] = Field(
        "auto",
        description="what the head reads: mean over tokens, the CLS pooler, or auto (the checkpoint's own: "
        "mean for sentence-transformers models such as minilm, else cls)",
    )


class DataConfig(Section):
    """Where the text classification data comes from."""

    source: str = Field("bbc_news", description="builtin name (bbc_news), a .csv/.tsv/.jsonl file, or a Hugging Face datasets directory saved with save_to_disk")
    text_column: str = "text"
    text_pair_column: str | None = Field(None, description="second text column for sentence pairs")
    label_column: str = "label"
    column_names: list[str] | None = Field(None, description="column names of a header-less CSV/TSV")
    test_path: str | None = Field(None, description="separate test file; else test_fraction is held out")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = Field(0, ge=0, le=MAX_SEED)
    max_length: int = Field(64, ge=8, le=4096, description="tokens per example (truncation)")
    max_train_samples: int | None = Field(None, ge=1, description="use a seeded subset of the training set")
    max_test_samples: int | None = Field(None, ge=1, description="use a seeded subset of the test set")


class FederationConfig(Section):
    """The federated rounds."""

    clients: int = Field(6, ge=1)
    clients_per_round: int = Field(6, ge=1)
    rounds: Rounds = Field(
        "auto",
        description="rounds to run, or auto: enough for `epochs` passes over the training set "
        f"(between {AUTO_ROUNDS_RANGE[0]} and {AUTO_ROUNDS_RANGE[1]} rounds; docs/learning.md, round 4)",
    )
    epochs: float = Field(
        8.0, gt=0, description="with rounds: auto, how many times the sampled clients' steps pass over the training set"
    )
    local_steps: int = Field(5, ge=1, description="optimizer steps per sampled client per round")
    batch_size: int = Field(32, ge=1, description="expected batch size (Poisson sampling under DP)")
    microbatch_size: int = Field(
        16, ge=1, description="examples per forward pass: a batch runs as length-sorted chunks (same gradient, less padding)"
    )
    lr: float = Field(0.1, gt=0, description="client learning rate of the LoRA factors")
    head_lr: float | None = Field(1.0, gt=0, description="client learning rate of the classifier head (null: lr)")
    lr_schedule: Literal[SCHEDULES] = Field(
        "cosine",
        description="the LoRA factors' learning rate over the rounds: lr·s(t) in round t of T, s = 1 (constant), "
        "½(1+cos(πt/T)) (cosine), 1−t/T (linear), or 0 for the first ⌊T/2⌋ rounds and then a cosine over the rest "
        "(probe_then_cosine: LP-FT); the head keeps head_lr, or lr when head_lr is null (docs/learning.md, rounds 14-15, 22)",
    )
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    clip_grad_norm: float | None = Field(
        1.0,
        gt=0,
        description="without sample-level DP, clip each step's batch gradient to this norm (as HF Trainer's "
        "max_grad_norm), so one learning rate suits DP and non-DP runs; null: no clipping",
    )
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    eval_every: int = Field(4, ge=0, description="evaluate every N rounds (0: only at the end)")
    eval_batch_size: int = Field(64, ge=1)
    client_weighting: Literal["samples", "uniform"] = "samples"
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="forward-pass precision: bfloat16 (CPU autocast), float32, or auto (bfloat16 where the CPU "
        "has native bfloat16 instructions); DP math stays float32",
    )
    device: str = Field(
        "auto",
        description="where the model trains and evaluates: auto (CUDA when present, else cpu), cpu, cuda, cuda:N or mps; "
        "see docs/devices.md",
    )
    _known_device = field_validator("device")(check_device_setting)
    logit_adjustment: float = Field(
        0.5, ge=0,
        description="classification: train on CE(f(x) + τ·log π, y), π the label prior (Menon et al. 2021; "
        "privately released at sample level, privacy.prior_epsilon); what the model serves: posthoc_adjustment. 0: plain cross-entropy",
    )
    posthoc_adjustment: float = Field(
        0.0, ge=0,
        description="classification: the served model predicts argmax f(x) − τ·log π (Menon et al. 2021's post-hoc "
        "logit adjustment, with the prior released for training: no further privacy cost), folded into the head's "
        "bias in every evaluation and the saved adapter; the checkpoint and the clients keep f. 0: predict with f(x)",
    )
    server_optimizer: Literal["none", "sgd", "momentum", "adagrad", "adam", "yogi"] = Field(
        "sgd",
        description="optimizer the server applies to the averaged update (sgd: FedAvg with server_lr; FedAvgM: momentum; "
        "FedAdagrad/FedAdam/FedYogi); "
        "post-processing, no privacy cost",
    )
    server_lr: float = Field(2.0, gt=0, description="server optimizer: step size η on the averaged update")
    server_momentum: float = Field(0.9, ge=0, lt=1, description="server optimizer: β (momentum) / β1 (adaptive)")
    server_beta2: float = Field(0.99, gt=0, lt=1, description="server optimizer adam/yogi: β2")
    server_tau: float = Field(1e-3, gt=0, description="server optimizer adagrad/adam/yogi: τ, the adaptivity floor")
    min_clients_per_round: int = Field(
        1, ge=1, description="aggregate a round when at least this many sampled clients answered (others dropped out)"
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads torch uses (default: OMP_NUM_THREADS if set, else the cores this process may use)"
    )

    def resolved_rounds(self, train_rows: int) -> int:
        """The rounds to run: ``rounds``, or for ``auto`` ``epochs`` passes over the ``train_rows``
        training examples, each round taking ``clients_per_round · local_steps · batch_size`` of
        them (expected counts under Poisson sampling), rounded and kept within
        :data:`AUTO_ROUNDS_RANGE`.

        Why the data's size: under a fixed target epsilon a client's noise multiplier depends on
        its sampling rate ``batch_size / rows`` and its steps. A client of 1,700 rows needs
        σ 0.62 for 80 steps and 0.71 for 320 (RDP, ε=6, δ=1e-5), so a large set can take many
        more steps for almost no extra noise per step, while a client of 300 rows needs 1.14 and
        1.78: small sets pay for every extra step (measured in docs/learning.md, round 4)."""
        if self.rounds != "auto":
            return self.rounds
        per_round = self.clients_per_round * self.local_steps * self.batch_size
        low, high = AUTO_ROUNDS_RANGE
        return min(high, max(low, round(self.epochs * train_rows / per_round)))

    @model_validator(mode="after")
    def _sampled_within_clients(self) -> "FederationConfig":
        if self.clients_per_round > self.clients:
            raise ValueError(
                f"clients_per_round ({self.clients_per_round}) is above clients ({self.clients}); "
                f"set federation.clients_per_round to at most {self.clients}"
            )
        if self.min_clients_per_round > self.clients_per_round:
            raise ValueError(
                f"min_clients_per_round ({self.min_clients_per_round}) is above clients_per_round "
                f"({self.clients_per_round}); set federation.min_clients_per_round to at most {self.clients_per_round}"
            )
        return self


class PrivacyConfig(Section):
    """Differential privacy.

    ``level: sample`` runs DP-SGD (Opacus) on every client; epsilon protects one example of a
    client's data. ``level: client`` runs DP-FedAvg on the server (clip each client's update,
    average uniformly, add Gaussian noise; optionally adaptive clipping, Andrew et al. 2021);
    epsilon protects a client's whole participation.
    """

    level: Literal["none", "sample", "client"] = "sample"
    target_epsilon: float | None = Field(6.0, gt=0, description="calibrate the noise to reach this epsilon")
    noise_multiplier: float | None = Field(
        None, ge=0, description="fixed noise multiplier instead (client level: the effective one the accountant sees)"
    )
    max_grad_norm: float = Field(1.0, gt=0, description="sample level: per-sample clipping norm C")
    head_clip_share: float | None = Field(
        0.95, gt=0, lt=1,
        description="sample level: clip each example's head gradient to share·C and its LoRA gradient to "
        "√(1−share²)·C (same sensitivity C, same noise); null, or a model without a trained head: one joint clip to C",
    )
    prior_epsilon: float = Field(
        0.1, gt=0,
        description="sample level, with federation.logit_adjustment: the part of target_epsilon spent on the "
        "noised label counts (discrete Laplace per client and class; DP-SGD gets the rest)",
    )
    client_clip: float = Field(
        0.1, gt=0, description="client level: clipping norm C of each client's update (initial C when adaptive)"
    )
    adaptive_clipping: bool = Field(
        False, description="client level: C tracks target_quantile of the update norms (Andrew et al. 2021)"
    )
    target_quantile: float = Field(0.5, gt=0, lt=1, description="client level, adaptive: quantile γ C aims at")
    clip_lr: float = Field(0.2, gt=0, description="client level, adaptive: geometric step η, C ← C·exp(−η(b̃−γ))")
    clipped_count_stddev: float | None = Field(
        None, gt=0, description="client level, adaptive: noise std σ_b on the clipped count (default max(clients_per_round/20, noise multiplier))"
    )
    delta: float = Field(1e-5, gt=0, lt=1)
    accountant: AccountantName = Field(DEFAULT_ACCOUNTANT, description="a registered accountant (fedlora accountant --help)")
    max_epsilon: float | None = Field(None, gt=0, description="stop before a round would pass this epsilon")
    secure_mode: bool = Field(False, description="cryptographically secure noise (Opacus secure_mode)")

    @model_validator(mode="after")
    def _one_noise_source(self) -> "PrivacyConfig":
        """With DP on: exactly one of target_epsilon and noise_multiplier (zero noise, which tests of
        clipping use, is refused for runs by :func:`fedlora_cli.validate.check_recipe`)."""
        if self.level == "none":
            return self
        if self.target_epsilon is None and self.noise_multiplier is None:
            raise ValueError("set privacy.target_epsilon or privacy.noise_multiplier (or privacy.level=none)")
        if self.target_epsilon is not None and self.noise_multiplier is not None:
            raise ValueError(
                "set only one of privacy.target_epsilon and privacy.noise_multiplier "
                "(e.g. add privacy.target_epsilon=null)"
            )
        return self


class OutputConfig(Section):
    """Where runs are written."""

    dir: str = Field("runs", description="parent directory of run directories")
    checkpoint_every: int = Field(1, ge=1, description="checkpoint every N rounds (and at the end)")


# --- task kinds (issue 14): classification (default) or causal_lm; every causal_lm rule is here ---
CLASSIFICATION_ONLY = {
    "model": ("train_head", "pooling"),
    "data": ("text_column", "text_pair_column", "label_column"),
    "federation": ("head_lr",),
}
LABEL_PARTITIONS = ("dirichlet", "pathological", "shards")  # split by label: causal_lm data has none
CAUSAL_LM_TARGET_MODULES = ["q_proj", "v_proj"]  # Llama-style attention (SmolLM2, Llama, Mistral, Qwen)


class CausalLMConfig(Section):
    """``task: causal_lm``: supervised fine-tuning of a decoder on prompt -> response pairs.

    The loss covers the response tokens only. Rows hold a prompt and a response column, or a
    chat ``messages`` column (a list of ``{role, content}``; the last message is the response).
    """

    prompt_column: str = Field("question", description="column with the prompt (GSM8K: question)")
    response_column: str = Field("answer", description="column with the response (GSM8K: answer); with choices, the option text or its index")
    messages_column: str | None = Field(None, description="chat column (list of {role, content}) instead of prompt/response")
    prompt_template: str = Field("{prompt}", description="the user turn; {prompt} is replaced by the prompt column")
    choices: list[str] | None = Field(
        None, min_length=2, description="multiple choice: the options every row chooses from; scored by per-token log-likelihood"
    )
    choices_column: str | None = Field(
        None, description="multiple choice with options per row (ARC/HellaSwag style): column with the row's list of options"
    )
    answer: Literal["gsm8k", "last_number", "text"] = Field(
        "gsm8k",
        description="exact match of generated answers: gsm8k (number after ####, else the last number), "
        "last_number, or text (whole stripped response)",
    )
    max_new_tokens: int = Field(128, ge=1, le=4096, description="greedy decoding limit for exact match")
    generate_samples: int = Field(
        32, ge=0, description="test examples decoded for exact match (decoding is slow on CPU; 0: none)"
    )

    @field_validator("prompt_template")
    @classmethod
    def _template_has_the_prompt(cls, value: str) -> str:
        if "{prompt}" not in value:
            raise ValueError("must contain {prompt} (where the prompt column's text goes), e.g. \"Question: {prompt}\"")
        return value

    @model_validator(mode="after")
    def _one_kind_of_choices(self) -> "CausalLMConfig":
        if self.choices is not None and self.choices_column is not None:
            raise ValueError("set causal_lm.choices (the same options for every row) or causal_lm.choices_column, not both")
        return self

    @property
    def multiple_choice(self) -> bool:
        return self.choices is not None or self.choices_column is not None


def causal_lm_problems(recipe: "Recipe") -> list[str]:
    """Settings that do not fit the recipe's task; fills in causal_lm's defaults (no head, q_proj/v_proj,
    iid clients). A classification key counts when it differs from its default, so a resolved recipe
    (every key written out) validates again."""
    if recipe.task == "classification":
        if recipe.causal_lm != CausalLMConfig():
            return ["causal_lm: settings for task causal_lm; add task: causal_lm or remove the causal_lm section"]
        return []
    problems = [
        f"{section}.{key}: a classification setting; task causal_lm has no classifier head or labels: remove it"
        for section, keys in CLASSIFICATION_ONLY.items()
        for key in keys
        if key != "train_head" and _differs_from_default(getattr(recipe, section), key)
    ]
    if recipe.model.train_head and "train_head" in recipe.model.model_fields_set:
        problems.append("model.train_head: true needs a classifier head; task causal_lm has none: remove it or set false")
    if recipe.partition.method in LABEL_PARTITIONS and "method" in recipe.partition.model_fields_set:
        problems.append(
            f"partition.method={recipe.partition.method} splits by label; causal_lm data has none: use iid or quantity"
        )
    if problems:
        return problems
    recipe.model.train_head = False
    if "target_modules" not in recipe.model.model_fields_set:
        recipe.model.target_modules = list(CAUSAL_LM_TARGET_MODULES)
    if "method" not in recipe.partition.model_fields_set:  # the default partitioner splits by label: iid instead
        iid_fields = PARTITIONERS.options["iid"].model_fields
        kept = {k: v for k, v in recipe.partition.model_dump().items() if k in iid_fields and k in recipe.partition.model_fields_set}
        recipe.partition = PARTITIONERS.parse({**kept, "method": "iid"})
    return []


def _differs_from_default(section: Section, key: str) -> bool:
    return getattr(section, key) != type(section).model_fields[key].get_default(call_default_factory=True)
# --- end of task kinds ---


class Recipe(Section):
    name: str = "custom"
    description: str = ""
    task: Literal["classification", "causal_lm"] = Field("classification", description="classification or causal_lm (decoder SFT)")
    causal_lm: CausalLMConfig = Field(default_factory=CausalLMConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    partition: PartitionChoice = Field(default_factory=PARTITIONERS.default_options)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    method: MethodChoice = Field(default_factory=METHODS.default_options)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _fits_task(self) -> "Recipe":
        problems = causal_lm_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _server_optimizer_keeps_method(self) -> "Recipe":
        """A server optimizer must act on what the method averages without breaking its equation.
        A method that folds its update into the frozen weights gets none unless the recipe asks for one."""
        optimizer, method = self.federation.server_optimizer, self.method.name
        if optimizer == "none":
            return self
        if METHODS.get(method).modifies_base:
            if "server_optimizer" not in self.federation.model_fields_set:
                self.federation.server_optimizer = "none"
                return self
            keeps_base = "/".join(name for name in METHODS.names() if not METHODS.get(name).modifies_base)
            raise ValueError(
                f"federation.server_optimizer={optimizer} with method {method}: {method} folds each round's "
                "product update into the frozen weights, so an optimizer step on the averaged factors would not "
                f"be the method any more; run the recipe `{method}` (plain averaging after twice the local steps), "
                f"or set federation.server_optimizer=none, or use method {keeps_base}"
            )
        if method == "fedsvd" and optimizer in PER_COORDINATE and self.method.svd_period > 0:
            raise ValueError(
                f"federation.server_optimizer={optimizer} with fedsvd: its per-coordinate second moments lose their "
                "meaning when the re-factorization rotates B's coordinates; use federation.server_optimizer=momentum "
                "(carried into the new basis exactly), sgd (stateless) or method.svd_period=0"
            )
        return self

    @model_validator(mode="after")
    def _client_level_post_processing(self) -> "Recipe":
        """Client-level DP needs a server step that only sees the noised mean (post-processing)."""
        if self.privacy.level == "client":
            from fedlora_cli.privacy.client_level import client_level_refusal

            problem = client_level_refusal(self.method.name)
            if problem:
                raise ValueError(problem)
        return self

    def resolved(self) -> dict[str, Any]:
        """The fully resolved recipe as plain data (what is written into a run directory)."""
        return self.model_dump(mode="json")


def _fields_at(loc: tuple) -> list[str]:
    """The valid key names at a location of the recipe tree (for did-you-mean); a choice
    section's location carries the choice (``("method", "fedavg")``)."""
    if len(loc) == 2 and loc[0] in CHOICES:
        return list(CHOICES[loc[0]].options[loc[1]].model_fields)
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _foreign_key(section: str, choice: str, key: str) -> str:
    """`` but of <owners>: remove it, or set section.key=<owner>`` when other choices have option ``key``."""
    registry = CHOICES[section]
    owners = registry.owners(key)
    if not owners:
        return ""
    settings = " or ".join(f"{section}.{registry.key}={owner}" for owner in owners)
    return f" but of {', '.join(owners)}: remove it, or set {settings}"


def _describe(error: dict) -> str:
    loc = tuple(error["loc"])
    choice = loc[1] if len(loc) > 1 and loc[0] in CHOICES else None
    shown = (loc[0], *loc[2:]) if choice else loc  # the union's choice is not a key the user wrote
    key = ".".join(str(p) for p in shown) or "(recipe)"
    if error["type"] == "union_tag_invalid":
        registry = CHOICES[loc[0]]
        return f"{loc[0]}.{registry.key}: {registry.unknown(error['ctx']['tag'])}"
    if error["type"] == "extra_forbidden":
        valid = _fields_at(loc[:-1])
        hint = _did_you_mean(str(loc[-1]), valid)
        foreign = _foreign_key(loc[0], choice, str(loc[-1])) if choice and len(loc) == 3 else ""
        what = f"not an option of {loc[0]} {choice}{foreign}" if foreign else f"unknown key{hint}"
        return f"{key}: {what}; valid keys here: {', '.join(valid)}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in {"model_type", "dict_type", "model_attributes_type"}:
        return f"{key}: expected a mapping of keys, got {short_repr(error.get('input'))}"
    if error["type"] == "missing":
        return f"{key}: required"
    got = f" (got {short_repr(error['input'])})" if "input" in error and not isinstance(error["input"], dict) else ""
    return f"{key}: {message}{got}"


def set_dotted(tree: dict, dotted_key: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``a.b.c``, creating mappings on the way."""
    parts = dotted_key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def apply_overrides(tree: dict, overrides: list[str]) -> list[str]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML); returns the problems found.

    An override that switches a choice (``method.name=ffa``, ``partition.method=iid``) first
    drops the options the recipe file wrote for its own choice that the new one does not have
    (``method.svd_period`` of fedsvd), so switching needs no other edit; options given as
    overrides are kept (and refused if they do not belong to the choice).
    """
    problems, parsed = [], []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"override '{item}': expected key.sub=value, e.g. federation.rounds=3")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        parsed.append((key.strip(), value))
    for key, value in parsed:
        _switch_choice(tree, key, value)
    for key, value in parsed:
        set_dotted(tree, key, value)
    return problems


def _switch_choice(tree: dict, key: str, value: Any) -> None:
    """Drop the file's options of a section's old choice when ``key=value`` picks another one."""
    section, _, sub = key.partition(".")
    registry = CHOICES.get(section)
    options = tree.get(section)
    if registry is None or sub != registry.key or not isinstance(value, str) or not isinstance(options, dict):
        return
    if value in registry.options and options.get(registry.key, registry.default) != value:
        _keep_options_of(tree, section, value)


def _keep_options_of(tree: dict, section: str, choice: str) -> None:
    kept = CHOICES[section].options[choice].model_fields
    tree[section] = {name: option for name, option in tree[section].items() if name in kept}


def without_foreign_options(tree: dict) -> dict:
    """A run directory's ``recipe.yaml`` as this version reads it. fedlora before the option
    registries wrote every method's and partitioner's options into every recipe it resolved
    (``method.svd_period`` under ``fedavg``); the options of choices the run did not make never
    applied and are dropped, so older runs still evaluate, compare and resume."""
    for section, registry in CHOICES.items():
        options = tree.get(section)
        if isinstance(options, dict) and options.get(registry.key, registry.default) in registry.options:
            _keep_options_of(tree, section, options.get(registry.key, registry.default))
    return tree


FORMER_DEFAULTS = {  # key -> how runs saved before the key existed behaved
    ("model", "pooling"): "cls",
    ("model", "base_dropout"): None,
    ("federation", "head_lr"): None,
    ("federation", "server_optimizer"): "none",
    ("federation", "server_lr"): 1.0,
    ("privacy", "head_clip_share"): None,
    ("federation", "logit_adjustment"): 0.0,
    ("federation", "lr_schedule"): "constant",
}


def with_former_defaults(tree: dict) -> dict:
    """A run's saved recipe that predates a key whose default changed ran with the former
    behaviour: fill it in, so the run resumes and evaluates as it trained (``model.pooling``: runs
    before it read the CLS pooler; ``model.base_dropout``: they kept the checkpoint's dropout;
    ``federation.head_lr``, ``server_optimizer``, ``server_lr``: the head stepped at ``lr`` and the
    server took the plain mean; ``privacy.head_clip_share``: they clipped jointly;
    ``federation.logit_adjustment``: they trained on plain cross-entropy; ``federation.lr_schedule``:
    their LoRA factors kept one learning rate)."""
    for (section, key), value in FORMER_DEFAULTS.items():
        options = tree.get(section)
        if isinstance(options, dict) and key not in options:
            options[key] = value
    return tree


def builtin_recipe_dir() -> Path:
    return Path(str(resources.files("fedlora_cli.recipes")))


def builtin_recipes() -> dict[str, Path]:
    """Builtin recipe name -> file."""
    return {path.stem: path for path in sorted(builtin_recipe_dir().glob("*.yaml"))}


def resolve_recipe_path(name_or_path: str | None) -> Path:
    """A recipe file from a path, or from a builtin recipe's name (default when None)."""
    if name_or_path is None:
        name_or_path = DEFAULT_RECIPE
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtins = builtin_recipes()
    if name_or_path in builtins:
        return builtins[name_or_path]
    hint = _did_you_mean(name_or_path, list(builtins))
    raise InputError(
        f"no recipe file or builtin recipe named '{name_or_path}'{hint} (no file {path.resolve()}); "
        f"builtin recipes: {', '.join(builtins)} (see `fedlora recipes list`)"
    )


def read_recipe_tree(path: Path, *, saved: bool = False) -> dict:
    """The recipe file as a tree; ``saved``: a run directory's resolved recipe (:func:`without_foreign_options`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read recipe: {exc.strerror}", source=str(path)) from None
    except UnicodeDecodeError as exc:
        raise InputError(
            f"not a text file (byte {exc.object[exc.start]:#04x} at offset {exc.start} is not UTF-8); "
            "a recipe is a YAML text file: check the path, or copy one with `fedlora recipes copy default`",
            source=str(path),
        ) from None
    try:
        tree = yaml.safe_load(text)
        too_big = isinstance(tree, dict) and expanded_size(tree, MAX_RECIPE_VALUES) is None
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML: {str(exc)[:500]}", source=str(path)) from None
    except RecursionError:
        raise InputError("not a usable recipe: nested too deeply", source=str(path)) from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise InputError("a recipe must be a YAML mapping of sections (model, data, ...)", source=str(path))
    if too_big:
        raise InputError(
            f"the recipe expands to more than {MAX_RECIPE_VALUES:,} values through YAML aliases (*name), or "
            "contains itself; a recipe needs a few hundred: write the values out instead of nesting aliases",
            source=str(path),
        )
    return with_former_defaults(without_foreign_options(tree)) if saved else tree


def parse_recipe(tree: dict, *, source: str | None = None, base_dir: Path | None = None) -> Recipe:
    """Validate a recipe tree, raising one InputError that lists every problem.

    Data paths become absolute (so a run directory's recipe works from anywhere): relative ones
    are taken from the current directory when they exist there, otherwise from ``base_dir``.
    """
    try:
        recipe = Recipe.model_validate(tree)
    except ValidationError as exc:
        raise InputError([_describe(e) for e in exc.errors()], source=source) from None
    if base_dir is not None:
        _resolve_data_paths(recipe.data, base_dir)
    return recipe


def _resolve_data_paths(data: DataConfig, base_dir: Path) -> None:
    for attr in ("source", "test_path"):
        value = getattr(data, attr)
        if value is None or value == "bbc_news":
            continue
        for candidate in (Path(value), base_dir / value):
            if candidate.exists():
                setattr(data, attr, str(candidate.resolve()))
                break


def load_recipe(name_or_path: str | None = None, overrides: list[str] | None = None, *, saved: bool = False) -> Recipe:
    """Load a recipe file (or builtin name), apply overrides, validate everything at once.
    ``saved``: the file is a run directory's resolved recipe (:func:`without_foreign_options`)."""
    path = resolve_recipe_path(name_or_path)
    tree = read_recipe_tree(path, saved=saved)
    problems = apply_overrides(tree, overrides or [])
    try:
        recipe = parse_recipe(tree, source=str(path), base_dir=path.parent)
    except InputError as exc:
        raise InputError(problems + exc.problems, source=str(path)) from None
    if problems:
        raise InputError(problems, source=str(path))
    return recipe


def recipe_changes(before: Any, after: Any, key: str = "") -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs between two resolved recipes
    (:meth:`Recipe.resolved`), e.g. ``model.rank: 4 -> 8``. A key only one of them has is a
    schema change between fedlora versions (a setting added at its default, an option of another
    method no longer written), not a change of the run: resolved recipes carry every setting."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            change
            for sub in before
            if sub in after
            for change in recipe_changes(before[sub], after[sub], f"{key}.{sub}" if key else sub)
        ]
    return [] if before == after else [f"{key}: {str(before)[:60]} -> {str(after)[:60]}"]


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.resolved(), sort_keys=False)
