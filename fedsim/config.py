"""The scenario's shape: frozen dataclasses, one per TOML section.

This module holds only the types and their defaults; loading, overrides and
validation live in ``fedsim.scenario``. Every field is documented in
``docs/scenarios.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, how it is split across clients."""

    dataset: str = "digits"  # synthetic | digits | mnist | cifar10
    path: str = ""  # directory with the standard files (mnist, cifar10)
    num_clients: int = 50
    partition: str = "iid"  # iid | dirichlet | shards | natural
    alpha: float = 0.5  # Dirichlet concentration over labels (partition = "dirichlet")
    shards_per_client: int = 2  # partition = "shards"
    test_fraction: float = 0.2  # held-out share for datasets without a fixed test split
    # Synthetic(alpha, beta) of Li et al. (FedProx) / LEAF
    synthetic_alpha: float = 1.0
    synthetic_beta: float = 1.0
    synthetic_dim: int = 60
    synthetic_classes: int = 10
    synthetic_mean_samples: int = 50  # mean samples per client (lognormal sizes)


@dataclass(frozen=True)
class ModelConfig:
    """A small torch model from ``fedsim.models``, or the user's own (``factory``)."""

    name: str = "mlp"  # logreg | mlp | cnn (unused when factory is set)
    hidden: tuple[int, ...] = (64,)  # hidden widths of the MLP
    # "package.module:function", called as function(input_shape, num_classes) -> nn.Module;
    # "" uses name. The module is imported from sys.path, then the scenario's folder and
    # the working folder.
    factory: str = ""
    # buffers (BatchNorm running statistics) across clients: "average" (FedAvg: the
    # clients' buffers averaged with the parameters' weights) | "local" (FedBN: each
    # client keeps its own); no effect for a model without buffers
    buffers: str = "average"


@dataclass(frozen=True)
class AlgorithmConfig:
    """The algorithm and its parameters: federated (fedavg, fedprox) or decentralized."""

    name: str = "fedavg"
    lr: float = 0.05  # client SGD step size
    local_epochs: int = 1
    batch_size: int = 16
    mu: float = 0.0  # FedProx proximal term; 0 is FedAvg
    server_lr: float = 1.0
    weighted: bool = True  # weight client updates by sample count
    # the server's reduction of the client updates: {name = ..., **parameters};
    # names in fedsim.stages.registry.AGGREGATORS (mean, coordinate_median,
    # trimmed_mean, krum, centered_clipping, gm, bgmd)
    aggregator: dict = field(default_factory=lambda: {"name": "mean"})
    # how the server applies the aggregate: {name = ..., **parameters}; names in
    # fedsim.stages.server.SERVER_OPTS (sgd with step server_lr, fedavgm, fedadagrad,
    # fedadam, fedyogi; Reddi et al., ICLR 2021); see docs/server_optimizers.md
    server_opt: dict = field(default_factory=lambda: {"name": "sgd"})
    # the clients' local optimizer: {name = "sgd" | "adam", **parameters}
    # (fedsim.local_opt; docs/scenarios.md); the default is plain SGD, without state
    local_opt: dict = field(default_factory=lambda: {"name": "sgd"})
    # communication compression: {name = "none" | "sketch" | "fetchsgd" | "topk", ...}
    # (fedsim.privacy.registry; docs/privacy.md)
    compress: dict = field(default_factory=lambda: {"name": "none"})
    # the clients' per-sample training loss: cross_entropy or "package.module:function"
    # (logits [B, C], labels [B]) -> [B]; fedsim.losses
    loss: str = "cross_entropy"
    # asynchronous decentralized algorithms (gossip_sgd, accelerated_gossip_sgd):
    gossip_rate: float = 1.0  # exchanges per edge per simulated second (Poisson)
    eval_interval_s: float = 1.0  # simulated seconds per evaluation row ("round")
    step_times: str = "poisson"  # local steps: poisson (continuized) | back_to_back
    # name = "coded": the straggler-mitigation scheme and its parameters, {scheme = "gc" |
    # "sr-sgc" | "m-sgc" | "wait-for-all" | "ignore-stragglers", code, s, B, W, lam, jobs,
    # models, mu}; checked by fedsim.coding.spec (docs/gradient_coding.md)
    coding: dict = field(default_factory=dict)
    # name = "minmax": the decentralized min-max method and its task, {method = "dadam3" |
    # "dposg" | "gda" | "extragradient" | "adam_server" | ..., lr, beta1, ..., task =
    # {name = "bilinear" | ..., ...}}; checked by fedsim.minmax.spec (docs/minmax.md)
    minmax: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ComputeConfig:
    """How long a client's local work takes, in simulated seconds."""

    model: str = "constant"  # constant | lognormal | shifted_exponential | trace
    seconds_per_sample: float = 0.001  # per sample per epoch, for a client of speed 1
    sigma: float = 1.0  # lognormal: std of log-time (heavy tail grows with sigma)
    rate: float = 1.0  # shifted_exponential: time = base * (1 + Exp(rate))
    trace: str = ""  # trace: CSV "client,seconds_per_sample"


@dataclass(frozen=True)
class AvailabilityConfig:
    """Whether a client is reachable."""

    model: str = "always"  # always | bernoulli | trace
    dropout: float = 0.0  # bernoulli: chance a selected client drops in a round
    trace: str = ""  # trace: CSV "client,start_s,end_s" intervals when online


@dataclass(frozen=True)
class NetworkConfig:
    """The simulated network and the round policy."""

    topology: str = "star"  # star (each client has its own link to the server) | builder | file
    topology_params: dict = field(default_factory=dict)  # builder arguments (n, degree, p, ...)
    server_node: int = -1  # node hosting the server; -1 picks the highest-degree node
    bandwidth_bps: float = 10e6  # default link bandwidth (bit/s) where a link has none
    latency_s: float = 0.02  # default one-way link latency (s) where a link has none
    server_bandwidth_bps: float = 0.0  # server's shared uplink/downlink capacity; 0 = unlimited
    policy: str = "all"  # all | first_k | deadline
    over_selection: float = 1.3  # first_k: select ceil(K * over_selection), keep the first K
    deadline_s: float = 10.0  # deadline: the round closes this long after it starts
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    availability: AvailabilityConfig = field(default_factory=AvailabilityConfig)
    # algorithm "coded": the workers' delay profile, {model = "bursty" | "bursts" |
    # "constant" | "lognormal" | "shifted_exponential" | "trace", ...}; fedsim.coding.spec
    delays: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AttackConfig:
    """Byzantine clients: which attack, how many, its parameters."""

    # update attacks (fedsim.stages.attacks): none, sign_flip, gaussian_noise,
    # gaussian_replace, alie, ipm, mimic; data attacks (fedsim.data.poison):
    # label_flip, backdoor
    name: str = "none"
    fraction: float = 0.0  # share of the population that is Byzantine, in [0, 0.5)
    params: dict = field(default_factory=dict)  # the attack's parameters, e.g. {scale = 100}


@dataclass(frozen=True)
class PrivacyConfig:
    """Client-level differential privacy (DP-FedAvg) and its accounting (docs/privacy.md)."""

    mode: str = "none"  # none | central (noise on the sum, at the server) | local (per client)
    clip: float = 1.0  # C: each client's update is clipped to this L2 norm
    noise_multiplier: float = 1.0  # z: Gaussian noise of std z * C
    target_epsilon: float = 0.0  # > 0: pick z so that epsilon(delta) after `rounds` is this
    delta: float = 1e-5
    accountant: str = "rdp"  # rdp | prv (opacus' accountants)
    max_epsilon: float = 0.0  # > 0: stop (results kept) before a round would exceed it
    # with a sketch: does the attacker know R_t ("known") or not ("secret")? The mechanism
    # and epsilon are the same (no amplification by a secret sketch is claimed)
    sketch_threat: str = "known"


@dataclass(frozen=True)
class Scenario:
    """One study: data x model x algorithm x network x attack, and how to run it."""

    name: str = "scenario"
    seed: int = 0
    rounds: int = 20
    clients_per_round: int = 10
    eval_every: int = 1
    checkpoint_every: int = 0  # write checkpoint.pt every K rounds and at the last (0: never)
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    batched: bool = True  # train the cohort in one vmapped computation
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    # name -> {dotted key: value}; each variant is run as the base scenario plus
    # its overrides, and the runs are compared in one plot.
    variants: dict = field(default_factory=dict)
    # a grid for `fedsim sweep`: {seeds = [...], axes = {axis: {label: {dotted key: value}}}}
    sweep: dict = field(default_factory=dict)
