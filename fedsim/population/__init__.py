"""Train a whole cohort of clients at once (``torch.func`` + ``vmap``), or one by one.

Local training, identical in both paths: every client starts at the global
parameters; in each epoch it visits its own samples in a fresh random order and
takes ``ceil(n_i / batch_size)`` plain SGD steps (no momentum) on consecutive
minibatches, the last one partial. The step loss is the mean loss (cross-entropy, or
the user's per-sample ``loss``; ``fedsim.losses``) over the real samples of the
minibatch, plus ``(mu / 2) * ||w - w_global||^2`` when ``mu > 0`` (FedProx).

The batched path stacks the parameters of ``m`` clients along a new leading
dimension and computes all their gradients with
``vmap(grad_and_value(loss))``. Clients smaller than the largest one get padded
minibatches with a sample mask; a step with no real sample is masked out
entirely, so it leaves the client unchanged even with ``mu > 0``. The shuffles
of all clients and epochs are drawn up front from the caller's generator, in an
order that does not depend on the path or on chunking, so both paths see
exactly the same minibatches.

For a plain stack of Linear and ReLU layers (the ``logreg`` and ``mlp`` models)
the batched path is the fused engine of ``fedsim.fastmlp`` instead: the same SGD
steps on the same minibatches, written as batched matrix products with the update
fused into the gradient product (about 2.3x faster than ``vmap`` on the benchmark
MLP). ``Population.engine`` says which path a population takes.

Other local optimizers (``local_opt``, ``fedsim.local_opt``: SGD with momentum or
weight decay, Adam) replace the plain SGD step by ``torch.optim``'s update on the same
gradient (FedProx's term included), on the generic ``vmap`` path (SGD with momentum or
weight decay also on the fused engine, through a buffer per layer) and on the loop
path, with the optimizer's state (momentum buffer; Adam's moments and
step count) as explicit ``[m, d]`` rows: fresh at every ``train`` (``state = "reset"``)
or kept per client id in ``opt_state`` between calls (``state = "keep"``, ``clients=``).
A step in which a client has no real sample changes neither its parameters nor its state.

Modes and randomness, as in a PyTorch training loop: clients train with the
model in ``train()`` mode and ``evaluate`` runs it in ``eval()`` mode (Dropout
off). A model that draws random numbers in train mode (``Population.stochastic``:
Dropout and the like, found by probing one forward pass) gets its randomness from
the caller's training stream: ``train`` draws one seed from ``gen`` after the
shuffles and runs local training with torch's global RNG seeded from it inside
``torch.random.fork_rng``, so the caller's global RNG is left as it was and a rerun
draws the same masks. The batched path vmaps with ``randomness="different"``
(each client its own masks, Dropout stays batched); the loop path draws client
after client from the same seeded RNG. The two paths draw different masks (both
reproducible). A model without randomness draws no seed, so its runs are exactly
those of a model that never had a Dropout layer.

Buffers (BatchNorm running statistics) are part of a client's state: ``train``
takes the buffers every client starts from (``[b]``, or ``[m, b]`` one row per
client) and returns each client's buffers after training (``CohortResult.buffers``),
and ``evaluate`` runs with given buffers. Averaging them (FedAvg) or keeping them
per client (FedBN) is the caller's policy. A model with buffers trains batched too,
each client's buffers a row of the vmap; a step in which a client has fewer than
``batch_size`` real samples (its last, partial minibatch) is taken for that client
alone, so padding slots never enter its batch statistics.

Modules (each imports at run time only modules listed before it; ``core`` is imported
for annotations only, under ``TYPE_CHECKING``):

* ``flat``: where each parameter and buffer sits in the flat ``[d]`` / ``[b]`` vectors.
* ``reproducible``: seeded global RNG, device RNG states, one thread for one client.
* ``probes``: one-off forward passes of the model (activation size, randomness).
* ``chunking``: memory budgets and how many clients one batched chunk holds.
* ``layout``: the shuffles of every client and epoch, minibatch layout, step counts.
* ``optstate``: the cohort's local optimizer state, fresh or kept per client.
* ``update``: one local optimizer step (plain SGD, ``fedsim.local_opt``'s rules).
* ``cohort``: one ``train`` call's clients and step settings, as every path takes them.
* ``fused``: the fused Linear/ReLU engine (``fedsim.fastmlp``), chunk by chunk.
* ``batched``: vmapped chunks of clients, with and without buffers.
* ``loop``: one client at a time with plain autograd.
* ``evaluate``: loss and accuracy of given parameters.
* ``core``: ``Population`` (setup, ``train``, the choice of path) and ``CohortResult``.

References:
    McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data" (AISTATS 2017) -- local SGD of FedAvg.
    Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020) --
    the FedProx proximal term.
"""

from fedsim.population.chunking import DEFAULT_CHUNK_BYTES, FUSED_CHUNK_BYTES, GPU_MIN_CHUNK_BYTES
from fedsim.population.core import CohortResult, Population

__all__ = ["DEFAULT_CHUNK_BYTES", "FUSED_CHUNK_BYTES", "GPU_MIN_CHUNK_BYTES", "CohortResult",
           "Population"]
