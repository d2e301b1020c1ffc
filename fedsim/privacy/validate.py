"""Scenario checks of ``[privacy]`` and ``algorithm.compress`` (one line each, naming the
field), called by ``fedsim.scenario.validate_scenario``."""

from __future__ import annotations

import math

from fedsim.config import Scenario
from fedsim.errors import ScenarioError
from fedsim.privacy.federated import ACCOUNTANTS, MODES, SKETCH_THREATS

LINEAR_NEEDED = "the aggregate must be the mean of the rows"


def validate_privacy(sc: Scenario, decentralized: bool) -> None:
    """Check ``sc.privacy`` and ``sc.algorithm.compress`` and how they fit together.

    Raises:
        ScenarioError: the first field out of range or in conflict, e.g.
            ``privacy.delta: must be in (0, 1), got 1.0``.
    """
    from fedsim.privacy.accounting import noise_for_target
    from fedsim.privacy.dp import check_clip, check_noise_multiplier
    from fedsim.privacy.registry import build_compression

    p, a = sc.privacy, sc.algorithm
    compress = a.compress.get("name", "none")
    if p.mode not in MODES:
        raise ScenarioError("privacy.mode", f"unknown value {p.mode!r}; allowed: "
                                            f"{', '.join(MODES)}")
    if decentralized and (p.mode != "none" or compress != "none"):
        key = "privacy.mode" if p.mode != "none" else "algorithm.compress.name"
        raise ScenarioError(key, f"not available for the decentralized algorithm {a.name!r}; "
                                 "allowed: none")
    build_compression(a.compress, 2**31 - 1, 0)  # names and ranges (b <= d: at the run's start)
    aggregator = a.aggregator.get("name", "mean")
    if compress in ("sketch", "fetchsgd") and aggregator != "mean":
        raise ScenarioError("algorithm.aggregator.name", f"must be 'mean' with compress "
                                                         f"{compress!r} ({LINEAR_NEEDED} of "
                                                         "sketches, a linear map)")
    if compress == "fetchsgd" and a.server_opt.get("name", "sgd") != "sgd":
        raise ScenarioError("algorithm.server_opt.name", "must be 'sgd' with compress "
                                                         "'fetchsgd' (its momentum lives in the "
                                                         "sketch, on the server)")
    if p.sketch_threat not in SKETCH_THREATS:
        raise ScenarioError("privacy.sketch_threat", f"unknown value {p.sketch_threat!r}; "
                                                     f"allowed: {', '.join(SKETCH_THREATS)}")
    if p.mode == "none":
        return
    check_clip(p.clip)
    check_noise_multiplier(p.noise_multiplier, p.clip)
    if not 0 < p.delta < 1:
        raise ScenarioError("privacy.delta", f"must be in (0, 1), got {p.delta!r}")
    if p.accountant not in ACCOUNTANTS:
        raise ScenarioError("privacy.accountant", f"unknown value {p.accountant!r}; allowed: "
                                                  f"{', '.join(ACCOUNTANTS)}")
    for key in ("target_epsilon", "max_epsilon"):
        value = getattr(p, key)
        if not math.isfinite(value) or value < 0:
            raise ScenarioError(f"privacy.{key}", f"must be a finite number >= 0 (0: none), "
                                                  f"got {value!r}")
    if p.mode == "sample" and p.target_epsilon > 0:
        raise ScenarioError("privacy.target_epsilon", "not available with mode 'sample' (each "
                                                      "client's epsilon depends on its size); "
                                                      "set noise_multiplier")
    if p.mode == "sample" and not sc.batched:
        raise ScenarioError("batched", "must be true with privacy.mode = 'sample' (DP-SGD "
                                       "trains the cohort with vmap)")
    if p.mode == "central" and aggregator != "mean":
        raise ScenarioError("algorithm.aggregator.name", "must be 'mean' with privacy.mode = "
                                                         f"'central' ({LINEAR_NEEDED}: the noise "
                                                         "is calibrated to its sensitivity)")
    if p.target_epsilon > 0:
        q = min(1.0, sc.clients_per_round / sc.data.num_clients) if p.mode == "central" else 1.0
        noise_for_target(p.target_epsilon, q, sc.rounds, p.delta, p.accountant)
