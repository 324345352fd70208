"""Client-level DP: DP-FedAvg with fixed or adaptive clipping of client updates.

DP-FedAvg (McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language
Models", ICLR 2018). Round t, global adapter ``x``, clients S sampled by Poisson sampling (each of
the K clients independently with probability ``q = m/K``, so |S| is random and may be 0), fixed
denominator ``m = clients_per_round = qK`` (the expected |S|: McMahan et al.'s fixed-denominator
estimator, whose sensitivity is ``C/m`` whatever |S| is); only the tensors clients exchange (their
uploads) are touched:

    Δ_k  = upload_k − x                                     (client k's update)
    Δ̂_k  = Δ_k · min(1, C / ‖Δ_k‖₂)                         (‖·‖₂ over all exchanged tensors)
    Δ̄    = (Σ_{k∈S} Δ̂_k + N(0, σ_Δ² C² I)) / m               (fixed-denominator mean)
    x'   = method.server_update(x, x + Δ̄)                   (SVD, head, ... : post-processing)

**Weights are uniform.** With weights ``p_k`` the sum ``Σ p_k Δ̂_k`` has sensitivity
``max_k p_k · C`` and the noise would have to grow with the largest weight; client-level DP
therefore always averages uniformly (``1/m``) and ignores ``federation.client_weighting``.

**Adaptive clipping** (Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning
with Adaptive Clipping", NeurIPS 2021, Alg. 1 with the geometric update): C follows the
``γ``-quantile of the update norms, estimated from a privatized count::

    b_k = 1[‖Δ_k‖₂ ≤ C]
    b̃   = 1/2 + (Σ_{k∈S} (b_k − 1/2) + N(0, σ_b²)) / m
    C  ← C · exp(−η_C (b̃ − γ))

The centred count has sensitivity 1/2, so the two Gaussian queries (sum with noise ``σ_Δ C``
and sensitivity C; count with noise ``σ_b`` and sensitivity 1/2) form one Gaussian mechanism
with noise multiplier ``z = (σ_Δ⁻² + (2σ_b)⁻²)^(−1/2)`` (Andrew et al. 2021, Sec. 3; the same
rule as TensorFlow Federated's adaptive Gaussian aggregator). The accountant sees ``z``; the
update noise is ``σ_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)``, which needs ``2σ_b > z``.

**Accounting.** T rounds of the sampled Gaussian mechanism with noise multiplier ``z`` and rate
``q = m / K`` (K = federation.clients), through the Opacus accountants, which assume Poisson
sampling at rate q: :meth:`ClientLevelDP.sample_clients` samples exactly so. A round that samples
no client still releases ``x + N(0, σ_Δ² C² I)/m`` (and the noised count): skipping it would make
an empty round visible in the model, which the sampled Gaussian mechanism's analysis does not
cover (as Opacus still takes a noised step on an empty Poisson batch). The epsilon protects a
client's whole participation (all its data, every round), not a single example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from opacus.optimizers.optimizer import _generate_noise

from fedlora_cli.device import seeded_generator
from fedlora_cli.errors import InputError
from fedlora_cli.privacy.accountants import calibrate_noise, epsilon
from fedlora_cli.privacy.secure_random import secure_mode_problem

State = dict[str, torch.Tensor]

SAMPLING_NOTE = (
    "clients are Poisson-sampled at rate q = clients_per_round/clients, as the accountant assumes "
    "(a round may have fewer or more clients than clients_per_round, or none)"
)
EPSILON_SCOPE = {
    "sample": "per example of a client's data (sample-level DP-SGD)",
    "client": "per client participation: all of one client's data over every round (client-level DP-FedAvg)",
}
DEFAULT_COUNT_STDDEV_FRACTION = 1 / 20  # σ_b = m/20, Andrew et al. 2021, Sec. 4


def default_count_stddev(noise_multiplier: float, clients_per_round: int) -> float:
    """``σ_b = max(m/20, z)``: the paper's m/20 when m is large (hundreds of clients per round);
    never below z, so the count costs at most ``σ_Δ ≤ z/√(3/4) ≈ 1.155·z`` of update noise
    (with few clients per round m/20 would be below z/2, which no budget allows).
    ``σ_b = 0`` when ``z = 0`` (no noise anywhere: the count is exact, as in TensorFlow
    Federated's ``adaptive_clip_noise_params``)."""
    if noise_multiplier == 0:
        return 0.0
    return max(clients_per_round * DEFAULT_COUNT_STDDEV_FRACTION, noise_multiplier)


def client_level_refusal(method_name: str) -> str | None:
    """Why ``method_name`` cannot run under client-level DP (None when it can).

    A method whose ``server_update`` reads the raw per-client uploads (``uses_raw_uploads``)
    would compute on un-noised client data: that is not post-processing of the DP mean.
    """
    from fedlora_cli.methods import METHODS

    cls = METHODS.get(method_name)
    if cls is None or not cls.uses_raw_uploads:
        return None
    allowed = sorted(name for name, c in METHODS.items() if not c.uses_raw_uploads)
    return (
        f"privacy.level=client cannot be used with method.name={method_name}: its server step reads each "
        f"client's raw upload, which is not post-processing of the noised mean; use privacy.level=sample "
        f"or one of: {', '.join(allowed)}"
    )


def update_noise_multiplier(noise_multiplier: float, count_stddev: float | None) -> float:
    """``σ_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)``: the update noise that, with count noise σ_b, gives z.

    Without adaptive clipping (``count_stddev`` None) ``σ_Δ = z``. Raises InputError when
    ``2σ_b ≤ z`` (the count query alone would already spend the whole budget).
    """
    if count_stddev is None or noise_multiplier == 0:
        return noise_multiplier
    if 2 * count_stddev <= noise_multiplier:
        raise InputError(
            f"privacy.clipped_count_stddev={count_stddev:.4g} is too small for noise multiplier "
            f"{noise_multiplier:.4g}: adaptive clipping needs 2·clipped_count_stddev > noise multiplier; "
            f"set privacy.clipped_count_stddev above {noise_multiplier / 2:.4g}"
        )
    return (noise_multiplier**-2 - (2 * count_stddev) ** -2) ** -0.5


def noise_generator(secure_mode: bool, seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator for DP noise and secret sampling.

    Normally seeded with ``seed``, on ``device`` (reproducible, resumable). With ``secure_mode`` the seed is
    ignored: torchcsprng's ``/dev/urandom`` generator (what Opacus's PrivacyEngine uses), the
    samples then drawn with Opacus's floating-point-attack-resistant sampler; without
    torchcsprng secure mode is an InputError (:func:`secure_mode_problem`), never a fallback.
    """
    if secure_mode:
        problem = secure_mode_problem()
        if problem:
            raise InputError(problem)
        import torchcsprng  # type: ignore[import-not-found]

        return torchcsprng.create_random_device_generator("/dev/urandom")
    return seeded_generator(seed, device)


def update_norm(delta: State) -> float:
    """``‖Δ‖₂`` over all tensors of the update, in float64."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in delta.values()))


def clip_update(delta: State, clip: float) -> tuple[State, float]:
    """``Δ · min(1, C/‖Δ‖₂)`` in float64, and the norm before clipping."""
    norm = update_norm(delta)
    factor = 1.0 if norm <= clip else clip / norm
    return {key: t.double() * factor for key, t in delta.items()}, norm


@dataclass
class ClientLevelDP:
    """DP-FedAvg on the server: clip, average uniformly, add noise, account per round."""

    noise_multiplier: float  # z: what the accountant sees
    sample_rate: float  # q = m / K
    clients_per_round: int  # m, the fixed denominator
    delta: float
    accountant: str
    clip: float  # C (changes every round under adaptive clipping)
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_stddev: float | None = None  # σ_b (adaptive only)
    max_epsilon: float | None = None
    secure_mode: bool = False
    rounds_done: int = 0

    @classmethod
    def build(cls, cfg, fed, method_name: str | None = None) -> "ClientLevelDP":
        """From ``privacy`` and ``federation`` config; calibrates z from the target over all rounds."""
        if method_name is not None:
            problem = client_level_refusal(method_name)
            if problem:
                raise InputError(problem)
        rate = fed.clients_per_round / fed.clients
        if cfg.noise_multiplier is not None:
            z = cfg.noise_multiplier
        else:
            z = calibrate_noise(cfg.target_epsilon, cfg.delta, rate, fed.rounds, cfg.accountant)
        count_stddev = None
        if cfg.adaptive_clipping:
            count_stddev = cfg.clipped_count_stddev
            if count_stddev is None:
                count_stddev = default_count_stddev(z, fed.clients_per_round)
            update_noise_multiplier(z, count_stddev)  # raises InputError when 2σ_b ≤ z
        return cls(
            noise_multiplier=z,
            sample_rate=rate,
            clients_per_round=fed.clients_per_round,
            delta=cfg.delta,
            accountant=cfg.accountant,
            clip=cfg.client_clip,
            adaptive=cfg.adaptive_clipping,
            target_quantile=cfg.target_quantile,
            clip_lr=cfg.clip_lr,
            count_stddev=count_stddev,
            max_epsilon=cfg.max_epsilon,
            secure_mode=cfg.secure_mode,
        )

    # ------------------------------------------------------------------------- accounting
    @property
    def update_noise_multiplier(self) -> float:
        """σ_Δ, the noise multiplier on the clipped sum (σ_Δ = z without adaptive clipping)."""
        return update_noise_multiplier(self.noise_multiplier, self.count_stddev if self.adaptive else None)

    def epsilon(self, rounds: int | None = None) -> float:
        """Epsilon per client participation after ``rounds`` rounds (default: those done)."""
        rounds = self.rounds_done if rounds is None else rounds
        return epsilon(self.noise_multiplier, self.sample_rate, rounds, self.delta, self.accountant)

    def would_exceed(self) -> bool:
        """Whether one more round would pass ``max_epsilon``."""
        return self.max_epsilon is not None and self.epsilon(self.rounds_done + 1) > self.max_epsilon

    # ------------------------------------------------------------------------- one round
    def sample_clients(self, clients: int, seed: int) -> list[int]:
        """Poisson sampling: client k takes part when ``u_k < q``, ``u_k ~ U[0, 1)`` independent.

        The rule of Opacus's ``UniformWithReplacementSampler`` (``torch.rand(K) < q``), drawn
        from :func:`noise_generator` (``seed``; the secure generator under ``secure_mode``).
        The result may be empty.
        """
        draws = torch.rand(clients, generator=noise_generator(self.secure_mode, seed), dtype=torch.float64)
        return torch.nonzero(draws < self.sample_rate).flatten().tolist()

    def privatize(
        self, global_state: State, uploads: list[State], generator: torch.Generator, keys: list[str] | None = None
    ) -> State:
        """The noised mean of the clipped updates, added to ``global_state`` (exchanged keys only).

        ``keys`` are the exchanged tensors (default: the uploads'; needed when no client was
        sampled, where the result is the noise alone). Also moves ``clip`` under adaptive
        clipping and counts the round for the accountant.
        """
        if keys is None:
            if not uploads:
                raise ValueError("privatize needs the exchanged keys when there is no upload")
            keys = list(uploads[0])
        m = self.clients_per_round
        clip = self.clip
        total = {key: torch.zeros_like(global_state[key], dtype=torch.float64) for key in keys}
        below = 0
        for upload in uploads:
            delta = {key: upload[key].double() - global_state[key].double() for key in keys}
            clipped, norm = clip_update(delta, clip)
            below += norm <= clip
            for key in keys:
                total[key] += clipped[key]
        std = self.update_noise_multiplier * clip
        new_state = {}
        for key in keys:
            noise = _generate_noise(std, total[key], generator=generator, secure_mode=self.secure_mode)
            mean = (total[key] + noise) / m
            new_state[key] = (global_state[key].double() + mean).to(global_state[key].dtype)
        if self.adaptive:
            count_noise = _generate_noise(
                self.count_stddev, torch.zeros(1, dtype=torch.float64), generator=generator, secure_mode=self.secure_mode
            )
            below_estimate = 0.5 + (below - len(uploads) / 2 + float(count_noise)) / m
            self.clip = clip * math.exp(-self.clip_lr * (below_estimate - self.target_quantile))
        self.rounds_done += 1
        return new_state

    def aggregate(self, method, global_state: State, uploads: list[State], round_index: int, generator: torch.Generator) -> State:
        """Noise the mean first, then run the method's server step on it (post-processing).

        The server optimizer and ``server_update`` see only the privatized state, as one upload of
        weight 1. ``uploads`` may be empty (no client sampled): the exchanged tensors then move by
        the noise alone.
        """
        keys = [key for key in global_state if method.is_trainable(key)]
        noised = self.privatize(global_state, uploads, generator, keys)
        return method.server_step(global_state, noised, [noised], torch.ones(1, dtype=torch.float64), round_index)

    def info(self) -> dict:
        """What the run reports about its client-level DP (for the live table and summary)."""
        out = {
            "noise_multiplier": self.noise_multiplier,
            "update_noise_multiplier": self.update_noise_multiplier,
            "client_sample_rate": self.sample_rate,
            "client_weighting": "uniform",
            "adaptive_clipping": self.adaptive,
            "client_clip": self.clip,
            "epsilon_scope": EPSILON_SCOPE["client"],
            "sampling_note": SAMPLING_NOTE,
        }
        if self.adaptive:
            out["clipped_count_stddev"] = self.count_stddev
            out["target_quantile"] = self.target_quantile
        return out
