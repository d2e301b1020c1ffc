"""Fused local SGD for stacks of Linear/ReLU layers (logreg, MLP), a chunk of clients at once.

``Population`` uses this engine instead of ``vmap(grad(...))`` when its model is a
plain stack of ``nn.Linear`` and ``nn.ReLU`` modules (see ``match_mlp``). It takes
exactly the same SGD steps on exactly the same minibatches as the generic path,
but writes the forward and backward passes as batched matrix products
(``torch.bmm`` / ``torch.baddbmm_``) over the ``m`` clients of a chunk, with the
SGD update fused into the gradient product: no gradient tensor is materialized,
no activation is allocated per step, and no ``torch.func`` machinery runs.

Notation, for one client (every tensor below carries a leading client dimension
``m`` in the code) and one minibatch of ``B`` slots, of which the real samples
have mask ``r_j`` = 1 and padding ``r_j`` = 0; ``c = sum_j r_j``:

* Homogeneous coordinates. Layer ``l`` (``W_l`` of shape ``[out, in]``, bias
  ``b_l``) is stored as one augmented matrix ``A_l = [W_l^T; b_l^T]`` of shape
  ``[in + 1, out]``, and its input activations carry a constant 1 in an extra
  last column: ``a = [h, 1]`` (``[B, in + 1]``). Then ``z_l = a_{l-1} A_l`` is
  ``h W_l^T + b_l`` and the gradient of ``A_l`` holds the bias gradient in its
  last row. A hidden layer whose successor has a bias gets one extra output
  unit whose weights stay zero and whose activation is overwritten with 1 after
  every forward product (it is the next layer's constant input). Layers without
  a bias have no extra row.
* Forward: ``a_0 = [x, 1]``; ``z_l = a_{l-1} A_l``; ``a_l = relu(z_l)`` where a
  ReLU follows the layer, else ``a_l = z_l``; the logits are ``z_L`` (or
  ``a_L`` when the stack ends with a ReLU).
* Loss: ``L = (1/max(c,1)) sum_j r_j CE_j`` with
  ``CE_j = logsumexp(z_j) - z_{j, y_j}``.
* Backward: ``dL/dz_L = (softmax(z_L) - onehot(y)) * r / max(c,1)`` (rows of
  padded slots are exactly zero, so padding contributes nothing);
  ``dL/dA_l = a_{l-1}^T g_l`` where ``g_l = dL/dz_l``;
  ``g_{l-1} = (g_l A_l^T) * 1[a_{l-1} > 0]`` (only where a ReLU follows layer
  ``l - 1``; ``relu(z) > 0`` iff ``z > 0``, the same subgradient 0 at 0 as
  autograd), computed with the *pre-update* ``A_l``; the extra constant column
  of ``g_{l-1}`` is zeroed so the constant unit's weights never move.
* Update (fused): ``A_l <- A_l - lr * a_{l-1}^T g_l`` as one
  ``baddbmm_(..., alpha=-lr)`` per layer, after ``g_{l-1}`` has been computed.
  FedProx (``mu > 0``) first pulls ``A_l <- A_l + lr*mu*s (A_l^0 - A_l)``
  (``torch.lerp``), where ``s`` is 1 if the client has a real sample in the step
  and 0 otherwise, and ``A_l^0`` the global parameters: together this is
  ``w <- w - lr * (grad + mu (w - w0))`` of ``fedsim.population.update.sgd_step``.
  A client with no real sample in a step has ``g = 0`` and ``s = 0``: unchanged.
* SGD with momentum or weight decay (``fedsim.local_opt``, as ``torch.optim.SGD``):
  the update is no longer fused; a buffer ``B_l`` per layer (the momentum buffer in the
  stored layout) takes ``B_l <- momentum B_l + a_{l-1}^T g_l + s (mu (A_l - A_l^0) +
  weight_decay A_l)`` (one ``baddbmm_``), then ``A_l <- A_l - lr s B_l``; an inactive
  client (``s = 0``) keeps ``B_l`` (its decay is 1) and ``A_l``.

Each layer is kept in the orientation whose products run fastest on small
minibatches: input-major ``A_l`` (``[in + 1, out]``) when ``out >= in``, else
output-major ``A_l^T`` (``[out, in + 1]``); hidden widths are padded with zero
units (zero weights, zero activations, zero gradients) to a multiple of ``PAD``.
Before the first update every client of a chunk holds the global parameters, so
the first step's forward products and ``g A^T`` are one plain matrix product
over all ``m * B`` rows. These choices give the same numbers up to float
summation order. Parameters are converted from and to the flat
``parameters_to_vector`` rows once per chunk.

References:
    McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data" (AISTATS 2017) -- local SGD of FedAvg.
    Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020) --
    the FedProx proximal term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

_threshold_backward = torch.ops.aten.threshold_backward.grad_input

# Hidden widths are padded with zero units to a multiple of this many (one 64-byte cache
# line of float32): the batched products run faster on aligned rows (on the benchmark
# MLP, 201 -> 208 stored units made the first layer's products about 20% faster).
PAD = 16


@dataclass(frozen=True)
class LinearSpec:
    """One ``nn.Linear`` of the stack and where its parameters lie in a flat row.

    Attributes:
        w_offset: first column of ``W`` (``[fan_out, fan_in]``, row-major) in a flat row.
        b_offset: first column of the bias, or None for a layer without one.
        fan_in: input features.
        fan_out: output features.
        relu: a ReLU follows the layer.
        extra: the layer has an extra constant output unit (the next layer's bias input).
        transposed: stored input-major ``[k, n]`` (else output-major ``[n, k]``).
        k: stored input width: the previous layer's ``n`` (``fan_in`` plus the constant
            unit and zero padding), or ``fan_in`` (+ 1 with a bias) for the first layer.
        n: stored output width: ``fan_out`` plus the constant unit, padded with zero
            units to a multiple of ``PAD`` for a hidden layer.
    """

    w_offset: int
    b_offset: int | None
    fan_in: int
    fan_out: int
    relu: bool
    extra: bool
    transposed: bool
    k: int
    n: int

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of one client's stored matrix."""
        return (self.k, self.n) if self.transposed else (self.n, self.k)


def match_mlp(model: nn.Module, sample_shape: tuple[int, ...]) -> FusedMLP | None:
    """The fused engine for ``model`` if it is a plain Linear/ReLU stack, else None.

    Matches a bare ``nn.Linear`` or an ``nn.Sequential`` (the exact classes, so no
    overridden ``forward``) of an optional leading ``nn.Flatten()`` (default
    ``start_dim=1, end_dim=-1``) followed by ``nn.Linear`` and ``nn.ReLU`` modules,
    starting with a Linear, never two ReLUs in a row, with no hooks on any module,
    whose parameters are exactly the Linear weights and biases in module order,
    all of one floating dtype, with chained widths. The input must reach the
    first Linear as ``[batch, fan_in]``: through the Flatten, or 2-D samples
    ``[N, fan_in]`` without one.

    Args:
        model: the population's model.
        sample_shape: the shape of one training sample (``x.shape[1:]``).

    Returns:
        A ``FusedMLP``, or None when anything does not match (the caller keeps
        the generic ``torch.func`` path).
    """
    if type(model) is nn.Linear:
        modules: list[nn.Module] = [model]
    elif type(model) is nn.Sequential:
        modules = list(model.children())
    else:
        return None
    if any(_has_hooks(m) for m in [model, *modules]):
        return None
    flatten = bool(modules) and type(modules[0]) is nn.Flatten
    if flatten:
        if (modules[0].start_dim, modules[0].end_dim) != (1, -1):
            return None
        modules = modules[1:]
    if not modules or type(modules[0]) is not nn.Linear:
        return None
    linears: list[nn.Linear] = []
    relus: list[bool] = []
    for mod in modules:
        if type(mod) is nn.Linear:
            linears.append(mod)
            relus.append(False)
        elif type(mod) is nn.ReLU and not relus[-1]:
            relus[-1] = True
        else:
            return None
    params = list(model.parameters())
    expected = [p for lin in linears for p in (lin.weight, lin.bias) if p is not None]
    if len(params) != len(expected) or any(p is not q for p, q in zip(params, expected,
                                                                     strict=True)):
        return None
    if len({p.dtype for p in params}) != 1 or not params[0].is_floating_point():
        return None
    fan_in = linears[0].in_features
    if flatten:
        if len(sample_shape) < 1 or _prod(sample_shape) != fan_in:
            return None
    elif tuple(sample_shape) != (fan_in,):
        return None
    specs: list[LinearSpec] = []
    offset = 0
    k = fan_in + (linears[0].bias is not None)
    for i, lin in enumerate(linears):
        if lin.in_features != (linears[i - 1].out_features if i else fan_in):
            return None
        w_offset = offset
        offset += lin.weight.numel()
        b_offset = None
        if lin.bias is not None:
            b_offset = offset
            offset += lin.bias.numel()
        last = i == len(linears) - 1
        extra = not last and linears[i + 1].bias is not None
        n = lin.out_features + extra
        if not last:
            n = -(-n // PAD) * PAD
        specs.append(LinearSpec(w_offset, b_offset, lin.in_features, lin.out_features,
                                relus[i], extra, lin.out_features >= lin.in_features, k, n))
        k = n
    return FusedMLP(tuple(specs), offset)


def _has_hooks(module: nn.Module) -> bool:
    """Whether forward (pre-)hooks or parametrizations could change what the module computes."""
    return bool(module._forward_hooks or module._forward_pre_hooks
                or getattr(module, "parametrizations", None))


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


class _Workspace:
    """Buffers of a chunk of up to ``capacity`` clients, reused by every chunk and step."""

    def __init__(self, specs: tuple[LinearSpec, ...], capacity: int, batch_size: int,
                 like: Tensor):
        cap, bs = capacity, batch_size
        self.capacity = capacity
        # The stored matrices A_l (or A_l^T) of the chunk's clients.
        self.params = [like.new_empty(cap, *s.shape) for s in specs]
        # a_0: the gathered minibatch rows [cap * bs, k_1] (last column 1 with a bias).
        self.inputs = like.new_empty(cap * bs, specs[0].k)
        if specs[0].b_offset is not None:
            self.inputs[:, -1] = 1.0
        # z_l / a_l of every layer (the last one holds the logits), and g_l = dL/dz_l.
        self.acts = [like.new_empty(cap, bs, s.n) for s in specs]
        self.grads = [like.new_empty(cap, bs, s.n) for s in specs]
        self.minus_one = like.new_full((cap, bs, 1), -1.0)
        self.loss = like.new_empty(cap, bs, 1)

    def nbytes(self) -> int:
        """Bytes held by the buffers."""
        tensors = [*self.params, self.inputs, *self.acts, *self.grads, self.minus_one,
                   self.loss]
        return sum(t.numel() * t.element_size() for t in tensors)


class FusedMLP:
    """Local SGD of a Linear/ReLU stack for a chunk of clients (built by ``match_mlp``).

    Args:
        specs: the Linear layers in order.
        d: number of parameters (the width of a flat row).
    """

    def __init__(self, specs: tuple[LinearSpec, ...], d: int):
        self.specs = specs
        self.d = d

    def __repr__(self) -> str:
        widths = [self.specs[0].fan_in] + [s.fan_out for s in self.specs]
        return f"FusedMLP({'-'.join(map(str, widths))})"

    # ------------------------------------------------------------ sizes
    def bytes_per_client(self, batch_size: int, element_size: int = 4) -> int:
        """Workspace bytes per client of a chunk: parameters, activations, gradients.

        Exactly ``workspace(m, batch_size, like).nbytes() / m`` for ``like`` of that
        element size.
        """
        params = sum(s.k * s.n for s in self.specs)
        acts = batch_size * (self.specs[0].k + 2 * sum(s.n for s in self.specs) + 2)
        return element_size * (params + acts)

    def workspace(self, capacity: int, batch_size: int, like: Tensor) -> _Workspace:
        """Buffers for chunks of up to ``capacity`` clients (dtype and device of ``like``)."""
        return _Workspace(self.specs, capacity, batch_size, like)

    # ------------------------------------------------------- conversions
    def templates(self, w0: Tensor) -> list[Tensor]:
        """The stored matrices of the flat parameters ``w0`` (``[d]``), one per layer."""
        out = []
        for s in self.specs:
            a = w0.new_zeros(s.k, s.n)  # input-major A = [W^T; b^T], extra column 0
            a[: s.fan_in, : s.fan_out] = self._weight(w0, s).T
            if s.b_offset is not None:
                a[s.fan_in, : s.fan_out] = w0[s.b_offset : s.b_offset + s.fan_out]
            out.append(a if s.transposed else a.T.contiguous())
        return out

    @staticmethod
    def _weight(flat: Tensor, s: LinearSpec) -> Tensor:
        """``W`` of layer ``s`` as a ``[..., fan_out, fan_in]`` view of flat row(s)."""
        cols = flat[..., s.w_offset : s.w_offset + s.fan_out * s.fan_in]
        return cols.unflatten(-1, (s.fan_out, s.fan_in))

    def stored(self, flat: Tensor, out: list[Tensor]) -> list[Tensor]:
        """The stored matrices of ``m`` flat rows (``[m, d]``), written into ``out[l][:m]``
        (zero padding and constant units); returns those views."""
        m = flat.shape[0]
        views = []
        for s, o in zip(self.specs, out, strict=True):
            o = o[:m].zero_()
            a = o if s.transposed else o.transpose(1, 2)  # [m, k, n], input-major
            a[:, : s.fan_in, : s.fan_out] = self._weight(flat, s).transpose(1, 2)
            if s.b_offset is not None:
                a[:, s.fan_in, : s.fan_out] = flat[:, s.b_offset : s.b_offset + s.fan_out]
            views.append(o)
        return views

    def write_rows(self, stored: list[Tensor], out: Tensor) -> None:
        """``out[i]`` = the flat row of client ``i``'s stored matrices (``out``: ``[m, d]``)."""
        for s, p in zip(self.specs, stored, strict=True):
            a = p if s.transposed else p.transpose(1, 2)  # [m, k, n], input-major
            self._weight(out, s).copy_(a[:, : s.fan_in, : s.fan_out].transpose(1, 2))
            if s.b_offset is not None:
                out[:, s.b_offset : s.b_offset + s.fan_out].copy_(a[:, s.fan_in, : s.fan_out])

    def _write_updates(self, params: list[Tensor], templates: list[Tensor], out: Tensor
                       ) -> None:
        """``out[i] = flat(params of client i) - w0`` for the chunk (``out``: ``[m, d]``).

        The difference is taken in place in the stored layout (contiguous, and the chunk's
        parameters are not needed after training), then copied to the flat rows: about
        30 % faster than subtracting on the strided, transposed views, same numbers.
        """
        for p, t in zip(params, templates, strict=True):
            p.sub_(t)
        self.write_rows(params, out)

    # ----------------------------------------------------------- training
    def train_chunk(
        self,
        ws: _Workspace,
        templates: list[Tensor],
        x: Tensor,
        y: Tensor,
        w0: Tensor,
        batches: Tensor,
        weights: Tensor,
        active: Tensor,
        lr: float,
        mu: float,
        out: tuple[Tensor, Tensor],
        num_steps: Tensor,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        bufs: list[Tensor] | None = None,
    ) -> None:
        """Local SGD of ``m`` clients; writes their updates and mean losses into ``out``.

        Args:
            ws: a workspace with ``capacity >= m`` (same batch size).
            templates: ``templates(w0)``.
            x: ``[N, fan_in]`` all training inputs (flattened).
            y: ``[N]`` int64 labels.
            w0: ``[d]`` global parameters.
            batches: ``[epochs, steps, m, bs]`` sample indices of every step (padding
                slots hold any valid index).
            weights: ``[steps, m, bs]`` ``r_j / max(c, 1)`` of every slot (0 on padding).
            active: ``[steps, m]`` 1.0 where the client has a real sample in the step.
            lr: SGD step size.
            mu: FedProx coefficient.
            out: ``([m, d], [m])`` rows to write the updates and losses into.
            num_steps: ``[m]`` local steps of each client (at least 1) for the mean loss.
            momentum, weight_decay: SGD as ``torch.optim.SGD`` (``fedsim.local_opt``);
                used with ``bufs`` only.
            bufs: the chunk's momentum buffers in the stored layout (``stored``; zeros
                for fresh state), updated in place. None: plain SGD, the update fused into
                the gradient product. Given: the gradient ``G = a^T g + s (mu (A - A^0) +
                weight_decay A)`` is accumulated into the buffer, ``b <- momentum b + G``,
                and ``A <- A - lr s b``; a client with no real sample in a step (``s = 0``)
                keeps its parameters and buffer.
        """
        epochs, steps, m, bs = batches.shape
        specs, last = self.specs, len(self.specs) - 1
        params = [p[:m] for p in ws.params]
        for p, t in zip(params, templates, strict=True):
            p.copy_(t.expand_as(p))
        rows = ws.inputs[: m * bs]
        x_rows = rows[:, : specs[0].fan_in]  # index_select writes here; the 1-column stays
        acts = [a[:m] for a in ws.acts]
        grads = [g[:m] for g in ws.grads]
        ins = [rows.view(m, bs, specs[0].k), *acts[:-1]]  # input activations of each layer
        # weights as the products want them: input-major [k, n] for the forward pass,
        # [n, k] for the backward one (views, no copies)
        fwd = [p if s.transposed else p.transpose(1, 2) for s, p in zip(specs, params,
                                                                       strict=True)]
        bwd = [f.transpose(1, 2) for f in fwd]
        # before the first update every client holds w0: one plain product for the chunk
        fwd0 = [t if s.transposed else t.T for s, t in zip(specs, templates, strict=True)]
        ones = [a[:, :, s.fan_out] if s.extra else None for s, a in zip(specs, acts,
                                                                       strict=True)]
        no_grad = [g[:, :, s.fan_out] if s.extra else None for s, g in zip(specs, grads,
                                                                          strict=True)]
        minus_one = ws.minus_one[:m]
        loss = ws.loss[:m].zero_()
        flat_batches = batches.reshape(epochs * steps, m * bs)
        step_x = flat_batches.unbind(0)
        step_y = y[flat_batches].view(epochs * steps, m, bs, 1).unbind(0)
        step_w = weights.unsqueeze(-1).unbind(0)  # [m, bs, 1] per step
        pulls: list[float | Tensor] = []
        if mu > 0:
            pull = (active * (lr * mu)).view(steps, m, 1, 1).unbind(0)
            all_active = active.bool().all(dim=1).tolist()
            pulls = [lr * mu if all_active[s] else pull[s] for s in range(steps)]
        logits, g_last = acts[-1], grads[-1]
        if bufs is not None:
            bufs = [b[:m] for b in bufs]
            decay, lrs, mus, wds = _masked_factors(active, momentum, lr, mu, weight_decay)
        for es in range(epochs * steps):
            s = es % steps
            y3, w = step_y[es], step_w[s]
            torch.index_select(x, 0, step_x[es], out=x_rows)
            # forward: z_l = a_{l-1} A_l, a_l = relu(z_l), constant unit set to 1
            for spec, a_in, f, f0, z, one in zip(specs, ins, fwd, fwd0, acts, ones,
                                                 strict=True):
                if es == 0:  # [m * bs, k] @ [k, n]
                    torch.mm(a_in.view(m * bs, spec.k), f0, out=z.view(m * bs, spec.n))
                else:
                    torch.bmm(a_in, f, out=z)
                if spec.relu:
                    z.relu_()
                if one is not None:
                    one.fill_(1.0)
            # loss and g_L = dL/dz_L = (softmax - onehot) * r / max(c, 1)
            mx = logits.amax(dim=2, keepdim=True)
            torch.sub(logits, mx, out=g_last).exp_()
            se = g_last.sum(dim=2, keepdim=True)
            g_last.div_(se)
            ce = se.log_().add_(mx).sub_(logits.gather(2, y3))  # logsumexp - z_y, [m, bs, 1]
            loss.addcmul_(ce, w)
            g_last.scatter_add_(2, y3, minus_one).mul_(w)
            if specs[-1].relu:
                _threshold_backward(g_last, logits, 0, grad_input=g_last)
            # backward with the SGD update fused in, last layer first
            for i in range(last, -1, -1):
                spec, p, a_in, g = specs[i], params[i], ins[i], grads[i]
                if i > 0:  # g_{i-1} = (g_i A_i^T) * relu'(a_{i-1}), with the pre-update A_i
                    g_prev = grads[i - 1]
                    if es == 0:
                        torch.mm(g.view(m * bs, spec.n), fwd0[i].T,
                                 out=g_prev.view(m * bs, spec.k))
                    else:
                        torch.bmm(g, bwd[i], out=g_prev)
                    if specs[i - 1].relu:
                        _threshold_backward(g_prev, a_in, 0, grad_input=g_prev)
                    if no_grad[i - 1] is not None:
                        no_grad[i - 1].zero_()
                if bufs is not None:  # b <- momentum b + G; A <- A - lr s b
                    b = bufs[i]
                    b.mul_(decay[s])
                    if spec.transposed:
                        b.baddbmm_(a_in.transpose(1, 2), g)
                    else:
                        b.baddbmm_(g.transpose(1, 2), a_in)
                    if mu > 0:
                        b.add_(torch.sub(p, templates[i]).mul_(mus[s]))
                    if weight_decay > 0:
                        b.add_(p * wds[s])
                    p.sub_(b * lrs[s])
                    continue
                if pulls:  # FedProx: A <- A + lr*mu*s (A^0 - A)
                    p.lerp_(templates[i], pulls[s])
                if spec.transposed:  # A <- A - lr * a^T g
                    p.baddbmm_(a_in.transpose(1, 2), g, alpha=-lr)
                else:  # A^T <- A^T - lr * g^T a
                    p.baddbmm_(g.transpose(1, 2), a_in, alpha=-lr)
        torch.div(loss.sum(dim=(1, 2)), num_steps, out=out[1])
        self._write_updates(params, templates, out[0])


def _masked_factors(active: Tensor, momentum: float, lr: float, mu: float,
                    weight_decay: float) -> tuple[list, list, list, list]:
    """Per step: the buffer's decay, ``lr s``, ``mu s`` and ``weight_decay s``; Python
    floats where every client of the chunk is active, else ``[m, 1, 1]`` tensors (decay 1
    and factors 0 for an inactive client)."""
    steps, m = active.shape
    s3 = active.view(steps, m, 1, 1)
    all_active = active.bool().all(dim=1).tolist()
    one = torch.ones((), dtype=active.dtype, device=active.device)
    out: tuple[list, list, list, list] = ([], [], [], [])
    for s in range(steps):
        if all_active[s]:
            vals = (momentum, lr, mu, weight_decay)
        else:
            vals = (torch.where(s3[s] > 0, one * momentum, one), s3[s] * lr, s3[s] * mu,
                    s3[s] * weight_decay)
        for lst, v in zip(out, vals, strict=True):
            lst.append(v)
    return out


__all__ = ["FusedMLP", "LinearSpec", "match_mlp"]
