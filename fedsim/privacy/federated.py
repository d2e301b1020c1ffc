"""Client-level differential privacy for a federated run: DP-FedAvg's pieces in the
pipeline, and the privacy spent, round by round, from opacus' accountants.

Where the pieces go (slot order of ``fedsim.stages.base``):

- ``mode = "central"`` (McMahan et al.): the server is trusted; each client's row is clipped
  to norm ``C`` *as sent* (after compression, if any: the clip bounds exactly what the noise
  covers), the server takes the unweighted mean and adds ``N(0, (zC)^2)`` to the sum
  (fixed denominator: the expected cohort ``qN``), then de-sketches / unsketches. What is
  released each round is the noised sum, and an attacker who knows the sketch ``R_t`` learns
  nothing more from the de-sketched update (post-processing).
- ``mode = "local"``: the server is not trusted; each client clips its update to ``C`` and adds
  ``N(0, (zC)^2)`` itself, in parameter space, *before* compressing (compression is then
  post-processing, whatever ``R_t`` the attacker knows).

Accounting (opacus' RDP or PRV accountant; fedsim writes none of its own):

- central: each round is a subsampled Gaussian mechanism with sample rate
  ``q = clients_per_round / num_clients`` and noise multiplier ``z``; after ``t`` rounds
  ``epsilon(delta)`` of ``t`` compositions. fedsim samples a fixed-size cohort without
  replacement while the accountants assume Poisson sampling at rate ``q``: the usual
  approximation (McMahan et al. 2018 make the same), stated in docs/privacy.md.
- local: a client's release has sensitivity ``2C`` (any two data sets of that client), so
  each release is a Gaussian mechanism with multiplier ``z / 2``, not subsampled (the
  server sees who sent it); the reported ``epsilon`` is that of the client that took part
  most often so far.
- sample (DP-SGD inside local training, Abadi et al. 2016): each local step clips every
  sample's gradient to ``C`` and adds ``N(0, (zC)^2)`` to their sum; a client with ``n``
  samples and batch ``B`` runs steps of sample rate ``q = min(1, B / n)``, ``epochs *
  ceil(n / B)`` of them per round it takes part in; the reported ``epsilon`` is the largest
  over the clients (sample-level DP of each client's data; shuffled batches accounted as
  Poisson sampling at ``q``, the usual approximation).

References:
    McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language
    Models" (ICLR 2018); Mironov, "Renyi Differential Privacy" (CSF 2017); Gopi, Lee,
    Wutschitz, "Numerical Composition of Differential Privacy" (NeurIPS 2021).
"""

from __future__ import annotations

import numpy as np

from fedsim.config import PrivacyConfig
from fedsim.errors import ScenarioError
from fedsim.privacy.accounting import epsilon, noise_for_target
from fedsim.privacy.dp import central_noise, clip_rows, local_noise
from fedsim.stages.base import ServerStage, Stage, chain, server_chain

MODES = ("none", "central", "local", "sample")
SKETCH_THREATS = ("known", "secret")
# what summary.json says of a secret sketch: the epsilon reported takes no credit for it
NO_AMPLIFICATION = ("none claimed: no theorem covers amplification by a secret sketch for "
                    "this mechanism and adjacency (Blocki et al., FOCS 2012, bound the JL "
                    "transform for other queries); epsilon is computed as if R_t were known")
ACCOUNTANTS = ("rdp", "prv")


class ClientPrivacy:
    """DP-FedAvg for one run: ``uplink``/``server`` wrap the compression pieces, ``epsilon``
    tracks the privacy spent.

    Args:
        cfg: the scenario's ``[privacy]`` table (``mode`` other than ``"none"``).
        num_clients: the population ``N``.
        cohort: clients per round ``m`` (sample rate ``q = m / N``).
        rounds: ``T``, for ``target_epsilon``.
    """

    def __init__(self, cfg: PrivacyConfig, num_clients: int, cohort: int, rounds: int,
                 sizes: np.ndarray | None = None, batch_size: int = 1, epochs: int = 1):
        if cfg.mode not in MODES[1:]:
            raise ScenarioError("privacy.mode", f"must be one of {', '.join(MODES[1:])} here, "
                                                f"got {cfg.mode!r}")
        self.cfg = cfg
        self.sample_rate = min(1.0, cohort / num_clients)
        self.cohort = cohort
        self.noise_multiplier = (cfg.noise_multiplier if cfg.target_epsilon <= 0 else
                                 noise_for_target(cfg.target_epsilon, self._q(), rounds,
                                                  cfg.delta, cfg.accountant))
        self.participation = np.zeros(num_clients, dtype=np.int64)
        self._eps_cache: dict[tuple[float, float, int], float] = {}
        if cfg.mode == "sample":  # each client's DP-SGD: sample rate and steps per round
            n = np.maximum(np.asarray(sizes if sizes is not None else np.ones(num_clients),
                                      dtype=np.int64), 1)
            self.client_q = np.minimum(1.0, batch_size / n)
            self.client_steps = epochs * -(-n // batch_size)

    def _q(self) -> float:
        return self.sample_rate if self.cfg.mode == "central" else 1.0  # sample: per client

    def _z(self) -> float:
        return self.noise_multiplier if self.cfg.mode == "central" else self.noise_multiplier / 2

    @property
    def dp_sgd(self) -> tuple[float, float] | None:
        """``(C, z)`` for the population's DP-SGD (mode "sample"), else None."""
        return (self.cfg.clip, self.noise_multiplier) if self.cfg.mode == "sample" else None

    def uplink(self, compress: Stage) -> Stage:
        """Clip (and, local, noise) around the compression stage, as the module says."""
        c, z = self.cfg.clip, self.noise_multiplier
        if self.cfg.mode == "sample":  # the noise is inside local training
            return compress
        if self.cfg.mode == "local":
            return chain(clip_rows(c), local_noise(z, c), compress)
        clip = clip_rows(c)  # keeps the width: the wire is the compressor's
        return chain(compress, clip._replace(nbytes=compress.nbytes))

    def server(self, decompress: ServerStage | None) -> ServerStage | None:
        """Central noise on the aggregate, before de-sketching (central mode only)."""
        if self.cfg.mode != "central":
            return decompress
        noise = central_noise(self.noise_multiplier, self.cfg.clip, float(self.cohort))
        return server_chain(noise, *((decompress,) if decompress is not None else ()))

    def epsilon(self, rounds_done: int, extra: int = 0) -> float:
        """``epsilon(delta)`` after ``rounds_done`` rounds (0 before the first); ``extra``
        more releases of the most exposed client (to look one round ahead)."""
        if self.cfg.mode == "sample":
            return self._sample_epsilon(extra)
        steps = rounds_done if self.cfg.mode == "central" else int(self.participation.max())
        steps += extra
        if steps == 0:
            return 0.0
        return self._epsilon(self._z(), self._q(), steps)

    def _sample_epsilon(self, extra: int) -> float:
        """The largest DP-SGD epsilon over the clients (``extra`` more rounds each)."""
        rounds = self.participation + extra
        worst = 0.0
        pairs = {(float(q), int(s)) for q, s in
                 zip(self.client_q[rounds > 0], (rounds * self.client_steps)[rounds > 0],
                     strict=True)}
        for q, steps in pairs:
            worst = max(worst, self._epsilon(self.noise_multiplier, q, steps))
        return worst

    def _epsilon(self, z: float, q: float, steps: int) -> float:
        """opacus' epsilon for ``steps`` releases at ``(z, q)``, remembered: a round asks for
        the same value twice (its column, and the budget check of the next round), and a
        PRV accountant takes a fraction of a second per call."""
        key = (z, q, steps)
        if key not in self._eps_cache:
            self._eps_cache[key] = epsilon(self.cfg.accountant, z, q, steps, self.cfg.delta)
        return self._eps_cache[key]

    def record(self, senders: np.ndarray) -> None:
        """The clients whose rows were released this round."""
        self.participation[senders] += 1

    def allows(self, next_round: int) -> bool:
        """Whether playing ``next_round`` keeps ``epsilon`` within ``max_epsilon`` (always,
        without a budget)."""
        if self.cfg.max_epsilon <= 0:
            return True
        return self.epsilon(next_round - 1, extra=1) <= self.cfg.max_epsilon

    def summary(self, rounds_done: int, sketched: bool = False) -> dict:
        """The privacy facts of the run for summary.json (``sketched``: the run sends
        sketches, so the threat model with respect to ``R_t`` is stated)."""
        threat = {}
        if sketched:
            threat = {"sketch_threat": self.cfg.sketch_threat,
                      "epsilon_valid_if_attacker_knows_sketch": True}
            if self.cfg.sketch_threat == "secret":
                threat["amplification_by_secret_sketch"] = NO_AMPLIFICATION
        return {**threat, "mode": self.cfg.mode, "clip": self.cfg.clip,
                "noise_multiplier": self.noise_multiplier, "delta": self.cfg.delta,
                "accountant": self.cfg.accountant,
                "sample_rate": (float(self.client_q.max()) if self.cfg.mode == "sample"
                                else self._q()),
                "epsilon": self.epsilon(rounds_done)}
