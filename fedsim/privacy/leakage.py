"""Gradient-leakage attacks: what an honest-but-curious server learns from one update.

Threat model. The server knows the global model ``W_0`` it sent, the client's local
recipe (``K`` steps of plain SGD with step size ``lr`` on its own batch), the
sketch ``R`` the client applies (if any; a linear map ``[d] -> [b]``) and nothing
about the client's data. It receives one message

    y = R · m + ξ,      m = (W_0 − W_K) / lr,      ξ ~ N(0, σ² I_b),

where ``m`` is the client's update in gradient units: for ``K = 1`` it is exactly
the gradient ``∇_W ℓ(W_0; x, y)``; for ``K > 1`` it is the sum of the ``K`` local
gradients along the client's trajectory (the update ``W_K − W_0`` divided by the
known ``−lr``). The attacker searches for a dummy batch ``x̃`` (and label) whose
simulated message ``R · m(x̃)`` matches ``y``, differentiating through the ``K``
unrolled SGD steps and through ``R``.

Attacks:

* :func:`dlg` — Deep Leakage from Gradients: L-BFGS on ``‖R m(x̃, softmax(ỹ)) − y‖²``
  with the dummy image and soft label learned jointly.
* :func:`idlg` — improved DLG: the label is read from the last layer's gradient
  (for batch 1 the row of the weight gradient that is negative), then DLG with
  that fixed label.
* :func:`inverting_gradients` — Inverting Gradients: ``1 − cos(R m(x̃), y)`` plus
  total variation, Adam on signed gradients with step decay, projected to the data
  range after each step; label from :func:`infer_label`.

Metrics: :func:`psnr` and :func:`label_accuracy`.

Everything is seeded through ``torch.Generator`` and runs a bounded number of
iterations, so a run is reproducible bit for bit on CPU.

References:
    Zhu, Liu, Han, "Deep Leakage from Gradients", NeurIPS 2019.
    Zhao, Mopuri, Bilen, "iDLG: Improved Deep Leakage from Gradients", arXiv:2001.02610, 2020.
    Geiping, Bauermeister, Dröge, Moeller, "Inverting Gradients — How easy is it to
    break privacy in federated learning?", NeurIPS 2020.
    Song et al., "Sketching for First Order Method: Efficient Algorithm for
    Low-Bandwidth Channel and Vulnerability", ICML 2023 (sketched updates and the
    attack with known ``R``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fedsim.errors import ScenarioError

Sketch = Callable[[Tensor], Tensor]
"""A linear map from a flat update ``[d]`` to its sketch ``[b]`` (differentiable in torch)."""

ATTACKS = ("dlg", "idlg", "ig")


# --------------------------------------------------------------------------- victim


class SigmoidCNN(nn.Module):
    """The DLG victim network scaled to small images: three sigmoid convs and a linear head.

    conv(k3, pad 1, stride 1) → sigmoid → conv(k3, pad 1, stride 2) → sigmoid →
    conv(k3, pad 1, stride 1) → sigmoid → linear to ``num_classes``. For 8x8 digits and
    12 channels: 12·8·8 → 12·4·4 = 192 features, d = 4666 parameters. Sigmoid (twice
    differentiable, no dead units) and no pooling, as in the DLG LeNet variant.

    Args:
        in_channels: image channels (1 for digits).
        image_size: height = width of the input (8 for digits).
        channels: width of every conv layer.
        num_classes: outputs of the linear head.

    References:
        Zhu, Liu, Han, "Deep Leakage from Gradients", NeurIPS 2019 (the LeNet variant
        with sigmoid activations and stride-2 convs used there for CIFAR/MNIST).
    """

    def __init__(
        self, in_channels: int = 1, image_size: int = 8, channels: int = 12, num_classes: int = 10
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, stride=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, stride=2)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1, stride=1)
        side = (image_size + 1) // 2
        self.fc = nn.Linear(channels * side * side, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # [n, C, H, W] -> [n, classes]
        h = torch.sigmoid(self.conv1(x))
        h = torch.sigmoid(self.conv2(h))
        h = torch.sigmoid(self.conv3(h))
        return self.fc(h.flatten(1))


def victim_cnn(
    seed: int = 0,
    *,
    in_channels: int = 1,
    image_size: int = 8,
    channels: int = 12,
    num_classes: int = 10,
    init_range: float = 0.5,
    dtype: torch.dtype = torch.float32,
) -> SigmoidCNN:
    """The untrained DLG victim with every weight and bias drawn i.i.d. ``U(−r, r)``.

    DLG initializes its victim uniformly in ``±0.5`` (wider than PyTorch's default,
    which keeps the sigmoids away from their linear regime and the gradients
    informative); the draw comes from a ``torch.Generator`` seeded with ``seed``.

    Args:
        seed: seed of the initialization.
        in_channels, image_size, channels, num_classes: see :class:`SigmoidCNN`.
        init_range: ``r`` of the uniform initialization.
        dtype: parameter dtype (float64 for exact comparisons in tests).

    Returns:
        The model in eval mode (it has no dropout or batch norm; eval for clarity).

    References:
        Zhu, Liu, Han, "Deep Leakage from Gradients", NeurIPS 2019.
    """
    model = SigmoidCNN(in_channels, image_size, channels, num_classes).to(dtype)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-init_range, init_range, generator=gen)
    return model.eval()


# ---------------------------------------------------------------------- threat model


@dataclass(frozen=True)
class ThreatModel:
    """What the client sends and what the server knows about how it was made.

    Attributes:
        local_steps: ``K`` local SGD steps on the client's batch (1: the gradient).
        lr: the local step size (known to the server; only matters for ``K > 1``).
        sketch: a linear map ``[d] -> [b]`` applied to the update, or None (b = d,
            identity). The attacker knows it (``R_t`` is shared between client and server).
        noise_std: std of the Gaussian noise added to the (sketched) message.
    """

    local_steps: int = 1
    lr: float = 0.1
    sketch: Sketch | None = None
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        if int(self.local_steps) < 1:
            raise ScenarioError("local_steps", f"must be >= 1, got {self.local_steps}")
        if not self.lr > 0:
            raise ScenarioError("lr", f"must be > 0, got {self.lr}")
        if not self.noise_std >= 0:
            raise ScenarioError("noise_std", f"must be >= 0, got {self.noise_std}")


def _params(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


def update_message(
    model: nn.Module,
    params: dict[str, Tensor],
    x: Tensor,
    target: Tensor,
    *,
    local_steps: int = 1,
    lr: float = 0.1,
    create_graph: bool = False,
) -> Tensor:
    """The client's update in gradient units, ``(W_0 − W_K) / lr``, as a flat ``[d]`` vector.

    ``K`` steps of full-batch SGD on ``(x, target)`` with the mean cross-entropy; the
    result is the sum of the ``K`` gradients along the trajectory (for ``K = 1`` the
    gradient at ``W_0``). With ``create_graph`` the steps are unrolled in autograd, so
    the result can be differentiated with respect to ``x`` and ``target``.

    Args:
        model: the architecture (its own parameters are not used).
        params: ``W_0`` by parameter name.
        x: ``[n, C, H, W]`` batch.
        target: ``[n]`` class indices or ``[n, classes]`` probabilities (soft labels).
        local_steps: ``K``.
        lr: local step size.
        create_graph: keep the graph for a second differentiation (attacker side).

    Returns:
        ``[d]`` in ``torch.nn.utils.parameters_to_vector`` order.
    """
    names = list(params)
    w = [params[k].detach().requires_grad_(True) for k in names]
    total: list[Tensor] | None = None
    for k in range(int(local_steps)):
        logits = functional_call(model, dict(zip(names, w, strict=True)), (x,))
        loss = F.cross_entropy(logits, target)
        grads = torch.autograd.grad(loss, w, create_graph=create_graph)
        total = list(grads) if total is None else [t + g for t, g in zip(total, grads, strict=True)]
        if k < int(local_steps) - 1:
            w = [p - lr * g for p, g in zip(w, grads, strict=True)]
            if not create_graph:
                w = [p.detach().requires_grad_(True) for p in w]
    assert total is not None
    return torch.cat([t.reshape(-1) for t in total])


def observe(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    threat: ThreatModel,
    generator: torch.Generator | None = None,
) -> Tensor:
    """What the server receives from a client holding ``(x, labels)``: ``R m + noise``.

    Args:
        model: the global model ``W_0`` (its parameters are read, not changed).
        x: ``[n, C, H, W]`` the client's batch.
        labels: ``[n]`` its class indices.
        threat: local steps, lr, sketch and noise.
        generator: stream of the noise (required when ``noise_std > 0``).

    Returns:
        ``[b]`` (``[d]`` without a sketch), detached.
    """
    with torch.enable_grad():
        m = update_message(
            model, _params(model), x, labels, local_steps=threat.local_steps, lr=threat.lr
        )
    y = m if threat.sketch is None else threat.sketch(m)
    if threat.noise_std > 0:
        if generator is None:
            raise ValueError("generator: required when noise_std > 0 (seeded noise)")
        noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        y = y + threat.noise_std * noise
    return y.detach()


def _adjoint(sketch: Sketch | None, y: Tensor, d: int) -> Tensor:
    """``R^T y`` for a linear ``sketch`` (one vector-Jacobian product), ``y`` if none."""
    if sketch is None:
        return y
    with torch.enable_grad():
        zero = torch.zeros(d, dtype=y.dtype, device=y.device, requires_grad=True)
        (adj,) = torch.autograd.grad(sketch(zero), zero, grad_outputs=y)
    return adj


def infer_label(model: nn.Module, observation: Tensor, threat: ThreatModel) -> Tensor:
    """iDLG: the label of a single-example update from the signs of the last layer's gradient.

    With cross-entropy and batch 1, the gradient of the head's logit ``i`` is
    ``softmax_i − [i = y]``: negative only for the true class; the head's weight row
    ``i`` is that times the (non-negative, here sigmoid) features. The attacker
    estimates the update by ``R^T y`` (exact for an orthogonal ``R``, unbiased for a
    Gaussian one with ``E[R^T R] = I``) and takes the class whose weight row plus bias
    sums lowest — the negative row.

    Args:
        model: the global model; its last parameters must be an ``nn.Linear`` head
            (weight ``[classes, h]``, optional bias ``[classes]``).
        observation: ``[b]`` what the server received.
        threat: the threat model (for the sketch's adjoint).

    Returns:
        ``[1]`` int64 label.

    References:
        Zhao, Mopuri, Bilen, "iDLG: Improved Deep Leakage from Gradients", 2020.
    """
    shapes = [p.shape for p in model.parameters()]
    d = sum(math.prod(s) for s in shapes)
    g = _adjoint(threat.sketch, observation.detach(), d)
    offsets = [0]
    for s in shapes:
        offsets.append(offsets[-1] + math.prod(s))
    head = max(i for i, s in enumerate(shapes) if len(s) == 2)
    classes = shapes[head][0]
    score = g[offsets[head] : offsets[head + 1]].reshape(shapes[head]).sum(1)
    if head + 1 < len(shapes) and shapes[head + 1] == torch.Size([classes]):
        score = score + g[offsets[head + 1] : offsets[head + 2]]
    return score.argmin().reshape(1)


# --------------------------------------------------------------------------- attacks


@dataclass
class AttackResult:
    """A reconstruction and how it was found.

    Attributes:
        x: ``[n, C, H, W]`` reconstructed batch, clipped to the data range.
        labels: ``[n]`` recovered labels (argmax of DLG's soft label; iDLG's inferred one).
        losses: the attack objective, one value per iteration (L-BFGS: per evaluation).
    """

    x: Tensor
    labels: Tensor
    losses: list[float] = field(default_factory=list)


def _simulate(
    model: nn.Module, params: dict[str, Tensor], x: Tensor, target: Tensor, threat: ThreatModel
) -> Tensor:
    m = update_message(
        model, params, x, target, local_steps=threat.local_steps, lr=threat.lr, create_graph=True
    )
    return m if threat.sketch is None else threat.sketch(m)


def _dummy(shape: tuple[int, ...], like: Tensor, generator: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=like.dtype).requires_grad_(True)


def _lbfgs_match(
    model: nn.Module,
    observation: Tensor,
    threat: ThreatModel,
    x_shape: tuple[int, ...],
    num_classes: int,
    iterations: int,
    generator: torch.Generator,
    label: Tensor | None,
    data_range: tuple[float, float],
) -> AttackResult:
    params = _params(model)
    x = _dummy(x_shape, observation, generator)
    variables = [x]
    y_logits = None
    if label is None:
        y_logits = _dummy((x_shape[0], num_classes), observation, generator)
        variables.append(y_logits)
    opt = torch.optim.LBFGS(
        variables,
        lr=1.0,
        max_iter=int(iterations),
        max_eval=int(iterations) * 5 // 4,
        history_size=100,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )
    losses: list[float] = []

    def closure() -> Tensor:
        opt.zero_grad()
        target = label if y_logits is None else F.softmax(y_logits, dim=-1)
        diff = _simulate(model, params, x, target, threat) - observation
        loss = (diff * diff).sum()
        loss.backward()
        losses.append(float(loss.detach()))
        return loss

    with torch.enable_grad():
        opt.step(closure)
    labels = label if y_logits is None else y_logits.detach().argmax(-1)
    lo, hi = data_range
    return AttackResult(x.detach().clamp(lo, hi), labels.detach().clone(), losses)


def dlg(
    model: nn.Module,
    observation: Tensor,
    threat: ThreatModel,
    *,
    x_shape: tuple[int, ...],
    num_classes: int,
    iterations: int = 200,
    generator: torch.Generator,
    data_range: tuple[float, float] = (0.0, 1.0),
) -> AttackResult:
    """Deep Leakage from Gradients: match the message with a dummy image and soft label.

    Minimizes ``‖R m(x̃, softmax(ỹ)) − y‖²`` over the dummy batch ``x̃`` and label
    logits ``ỹ`` (both drawn ``N(0, 1)`` from ``generator``) with L-BFGS (history 100,
    strong-Wolfe line search for stability; DLG uses lr 1 without one). The result is
    clipped to ``data_range`` for reporting.

    Args:
        model: the global model ``W_0``.
        observation: ``[b]`` the received message.
        threat: what the server knows (steps, lr, sketch; the noise std is not used).
        x_shape: ``[n, C, H, W]`` of the batch to reconstruct.
        num_classes: label dimension.
        iterations: L-BFGS iterations (at most ``1.25 ×`` that many evaluations).
        generator: seeds the dummy initialization.
        data_range: ``(lo, hi)`` of the data, for clipping the output.

    Returns:
        :class:`AttackResult`.

    References:
        Zhu, Liu, Han, "Deep Leakage from Gradients", NeurIPS 2019.
    """
    return _lbfgs_match(
        model,
        observation,
        threat,
        tuple(x_shape),
        num_classes,
        iterations,
        generator,
        None,
        data_range,
    )


def idlg(
    model: nn.Module,
    observation: Tensor,
    threat: ThreatModel,
    *,
    x_shape: tuple[int, ...],
    num_classes: int,
    iterations: int = 200,
    generator: torch.Generator,
    data_range: tuple[float, float] = (0.0, 1.0),
) -> AttackResult:
    """iDLG: the label from the head's gradient signs (:func:`infer_label`), then DLG on ``x̃``.

    Args:
        model, observation, threat, x_shape, num_classes, iterations, generator,
            data_range: as in :func:`dlg`; ``x_shape[0]`` must be 1.

    Returns:
        :class:`AttackResult`.

    References:
        Zhao, Mopuri, Bilen, "iDLG: Improved Deep Leakage from Gradients", 2020.
    """
    if x_shape[0] != 1:
        raise ValueError(
            f"x_shape: iDLG infers the label of a single example, got batch {x_shape[0]}"
        )
    label = infer_label(model, observation, threat)
    return _lbfgs_match(
        model,
        observation,
        threat,
        tuple(x_shape),
        num_classes,
        iterations,
        generator,
        label,
        data_range,
    )


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic total variation: mean absolute difference of neighbouring pixels.

    Args:
        x: ``[n, C, H, W]``.

    Returns:
        Scalar ``mean|x[..., 1:, :] − x[..., :-1, :]| + mean|x[..., 1:] − x[..., :-1]|``.

    References:
        Geiping et al., "Inverting Gradients", NeurIPS 2020 (the TV prior of the attack).
    """
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    dx = (x[..., 1:] - x[..., :-1]).abs().mean()
    return dx + dy


def inverting_gradients(
    model: nn.Module,
    observation: Tensor,
    threat: ThreatModel,
    *,
    x_shape: tuple[int, ...],
    num_classes: int,
    iterations: int = 400,
    generator: torch.Generator,
    lr: float = 0.1,
    tv_weight: float = 1e-4,
    data_range: tuple[float, float] = (0.0, 1.0),
    labels: Tensor | None = None,
) -> AttackResult:
    """Inverting Gradients: cosine distance plus total variation, signed Adam, box projection.

    Minimizes ``1 − cos(R m(x̃), y) + tv_weight · TV(x̃)`` over ``x̃`` (drawn ``N(0, 1)``
    from ``generator``) with Adam on the sign of the gradient, the step size divided by
    10 at 3/8, 5/8 and 7/8 of the iterations, and ``x̃`` projected onto ``data_range``
    after every step. The cosine makes the attack blind to the update's scale (so to
    ``lr`` and ``K``'s magnitude). Labels: ``labels`` if given, else :func:`infer_label`
    (batch 1).

    Args:
        model, observation, threat, x_shape, num_classes, generator, data_range: as in
            :func:`dlg`.
        iterations: Adam steps.
        lr: initial Adam step size.
        tv_weight: weight of the total-variation prior.
        labels: ``[n]`` known labels (skips the inference; needed for batches > 1).

    Returns:
        :class:`AttackResult`.

    References:
        Geiping, Bauermeister, Dröge, Moeller, "Inverting Gradients — How easy is it
        to break privacy in federated learning?", NeurIPS 2020.
    """
    if labels is None:
        if x_shape[0] != 1:
            raise ValueError(
                f"labels: needed for a batch of {x_shape[0]} (inference is for batch 1)"
            )
        labels = infer_label(model, observation, threat)
    params = _params(model)
    lo, hi = data_range
    x = _dummy(tuple(x_shape), observation, generator)
    opt = torch.optim.Adam([x], lr=lr)
    n = int(iterations)
    milestones = [n * 3 // 8, n * 5 // 8, n * 7 // 8]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    losses: list[float] = []
    with torch.enable_grad():
        for _ in range(n):
            opt.zero_grad()
            sim = _simulate(model, params, x, labels, threat)
            cos = F.cosine_similarity(sim, observation, dim=0)
            loss = 1 - cos + tv_weight * total_variation(x)
            loss.backward()
            assert x.grad is not None
            x.grad.sign_()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
            losses.append(float(loss.detach()))
    return AttackResult(x.detach().clone(), labels.detach().clone(), losses)


def run_attack(
    attack: str,
    model: nn.Module,
    observation: Tensor,
    threat: ThreatModel,
    *,
    x_shape: tuple[int, ...],
    num_classes: int,
    generator: torch.Generator,
    iterations: int | None = None,
    data_range: tuple[float, float] = (0.0, 1.0),
) -> AttackResult:
    """Dispatch by name: ``"dlg"``, ``"idlg"`` or ``"ig"`` (defaults for ``iterations``).

    Args:
        attack: one of :data:`ATTACKS`.
        iterations: None for the attack's default.
        Others: as in :func:`dlg`.

    Returns:
        :class:`AttackResult`.
    """
    kw: dict = dict(
        x_shape=tuple(x_shape), num_classes=num_classes, generator=generator, data_range=data_range
    )
    if iterations is not None:
        kw["iterations"] = int(iterations)
    if attack == "dlg":
        return dlg(model, observation, threat, **kw)
    if attack == "idlg":
        return idlg(model, observation, threat, **kw)
    if attack == "ig":
        return inverting_gradients(model, observation, threat, **kw)
    raise ScenarioError("attack", f"must be one of {', '.join(ATTACKS)}, got {attack!r}")


# --------------------------------------------------------------------------- metrics


def psnr(x: Tensor, reference: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio ``10 log10(range² / MSE)`` in dB (``inf`` when identical).

    Args:
        x: reconstruction, any shape.
        reference: the original, same shape.
        data_range: ``max − min`` of the data (1 for digits in ``[0, 1]``).

    Returns:
        PSNR in dB over all elements; ``math.inf`` when the MSE is 0.
    """
    if x.shape != reference.shape:
        raise ValueError(
            f"x: shape {tuple(x.shape)} differs from reference {tuple(reference.shape)}"
        )
    mse = float(((x.double() - reference.double()) ** 2).mean())
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def label_accuracy(predicted: Tensor, true: Tensor) -> float:
    """Share of labels recovered exactly, in ``[0, 1]``.

    Args:
        predicted: ``[n]`` recovered labels.
        true: ``[n]`` the client's labels.

    Returns:
        Fraction equal.
    """
    if predicted.shape != true.shape:
        raise ValueError(
            f"predicted: shape {tuple(predicted.shape)} differs from {tuple(true.shape)}"
        )
    return float((predicted.long() == true.long()).double().mean())


# ---------------------------------------------------------------------------- sketches


def gaussian_sketch(d: int, b: int, generator: torch.Generator, dtype=torch.float32) -> Tensor:
    """A dense Gaussian sketch matrix ``R ∈ R^{b×d}`` with i.i.d. ``N(0, 1/b)`` entries.

    ``E[R^T R] = I``, so ``‖R v‖ ≈ ‖v‖``. Use as ``sketch=lambda v: R @ v``.

    Args:
        d: update dimension.
        b: sketch width.
        generator: the sketch's seeded stream (the server knows it too).
        dtype: matrix dtype.

    Returns:
        ``[b, d]``.

    References:
        Song et al., "Sketching for First Order Method…", ICML 2023.
    """
    return torch.randn((b, d), generator=generator, dtype=dtype) / math.sqrt(b)


def orthogonal_sketch(d: int, generator: torch.Generator, dtype=torch.float32) -> Tensor:
    """A random orthogonal ``[d, d]`` matrix (QR of a Gaussian, signs fixed): ``b = d``, isometric.

    Args:
        d: dimension.
        generator: seeded stream.
        dtype: matrix dtype.

    Returns:
        ``Q`` with ``Q^T Q = I``.
    """
    q, r = torch.linalg.qr(torch.randn((d, d), generator=generator, dtype=dtype))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def matrix_sketch(r: Tensor) -> Sketch:
    """The linear map ``v ↦ R v`` of a ``[b, d]`` matrix, as a :data:`Sketch`."""
    return lambda v: r @ v


class _OperatorMap(torch.autograd.Function):
    """``v -> op.sketch(v)`` with the transpose ``op.desketch`` as its backward."""

    @staticmethod
    def forward(ctx, v: Tensor, op) -> Tensor:  # [d] -> [b]
        ctx.op = op
        with torch.no_grad():
            return op.sketch(v.unsqueeze(0))[0]

    @staticmethod
    def backward(ctx, grad: Tensor):  # [b] -> [d]
        return ctx.op.desketch(grad.unsqueeze(0))[0], None


def operator_sketch(op) -> Sketch:
    """Adapt a sketch operator (``.sketch(X [m, d]) -> [m, b]`` and its transpose
    ``.desketch(Y [m, b]) -> [m, d]``, as in ``fedsim.privacy.sketch``) to a :data:`Sketch`.

    The operator's own code need not be differentiable: the backward pass applies
    ``desketch`` (``R^T``), which is the exact gradient of a linear map.

    Args:
        op: the operator (the same one, same seed, the client used).

    Returns:
        ``v [d] -> R v [b]``, differentiable in ``v``.
    """
    return lambda v: _OperatorMap.apply(v, op)
