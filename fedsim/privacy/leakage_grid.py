"""A grid of gradient-leakage attacks: PSNR and label accuracy vs sketch width and noise.

For every attack, sketch ratio ``b/d``, noise std and number of local steps, each
image is the batch of one client; the server observes ``R m + N(0, σ² I_b)`` (see
:mod:`fedsim.privacy.leakage`) with a dense Gaussian ``R`` (``N(0, 1/b)`` entries,
known to the attacker) and reconstructs the image. Writes ``leakage.csv`` (one row
per attack × setting × image) and ``leakage_grid.png`` (originals over
reconstructions). Another sketch (the operators of :mod:`fedsim.privacy.sketch`, or
none at full width) comes in through ``sketch_factory``; ``fedsim attack leakage``
(:mod:`fedsim.privacy.leakage_study`) runs the grid on a scenario's own images.

Seeds: the model, each width's ``R``, each image's noise direction and each image's
dummy initialization have their own streams split from ``seed``
(:func:`fedsim.seeding.stream_seed`). The noise of an image is the same standard
normal vector scaled by each ``σ`` (common random numbers), and the dummy start of
an image is the same in every setting, so settings differ only in what they vary.

Reproduce the table of ``docs/leakage.md`` with
``python -m fedsim.privacy.leakage_grid OUT_DIR``.

References:
    Zhu, Liu, Han, "Deep Leakage from Gradients", NeurIPS 2019.
    Zhao, Mopuri, Bilen, "iDLG: Improved Deep Leakage from Gradients", 2020.
    Geiping, Bauermeister, Dröge, Moeller, "Inverting Gradients", NeurIPS 2020.
    Song et al., "Sketching for First Order Method: Efficient Algorithm for
    Low-Bandwidth Channel and Vulnerability", ICML 2023.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedsim.errors import ScenarioError
from fedsim.privacy.leakage import (
    ATTACKS,
    Sketch,
    ThreatModel,
    gaussian_sketch,
    label_accuracy,
    matrix_sketch,
    observe,
    psnr,
    run_attack,
    victim_cnn,
)
from fedsim.seeding import stream_seed

COLUMNS = (
    "attack", "sketch", "b/d", "b", "d", "noise", "steps", "image", "label", "psnr_db",
    "label_acc",
)  # fmt: skip
SketchFactory = Callable[[int, int], Sketch | None]
"""``(d, b) -> sketch``: the linear map ``[d] -> [~b]`` of a width (None: the plain update)."""
DEFAULT_ITERATIONS = {"dlg": 200, "idlg": 200, "ig": 300}


def _gen(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, f"leakage/{name}"))


def _as_images(images, labels) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ScenarioError(
            "images", f"expected [N, H, W] or [N, C, H, W], got shape {tuple(x.shape)}"
        )
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if y.shape != (x.shape[0],):
        raise ScenarioError("labels", f"expected shape [{x.shape[0]}], got {tuple(y.shape)}")
    return x, y


def run_leakage_grid(
    images,
    labels,
    *,
    out_dir: str | Path,
    model_factory: Callable[[int], nn.Module] | None = None,
    num_classes: int | None = None,
    ratios: Sequence[float] = (1.0, 0.5, 0.1, 0.02),
    noise_stds: Sequence[float] = (0.0, 1e-3, 1e-2, 0.1),
    attacks: Sequence[str] = ("idlg", "ig"),
    local_steps: Sequence[int] = (1,),
    lr: float = 0.1,
    iterations: Mapping[str, int] | None = None,
    seed: int = 0,
    data_range: tuple[float, float] = (0.0, 1.0),
    figure_images: int = 4,
    progress: Callable[[dict], None] | None = None,
    sketch_factory: SketchFactory | None = None,
    sketch_name: str = "dense",
) -> list[dict]:
    """Attack every image under every (attack, b/d, noise, steps); write CSV and figure.

    Args:
        images: ``[N, H, W]`` or ``[N, C, H, W]`` array in ``data_range``; each image is
            one client's batch of 1.
        labels: ``[N]`` integer labels.
        out_dir: folder for ``leakage.csv`` and ``leakage_grid.png`` (created).
        model_factory: ``seed -> model`` (the global model the server sent; its last
            layer a linear head). Default: :func:`fedsim.privacy.leakage.victim_cnn`
            sized to the images.
        num_classes: label count; default ``max(labels) + 1`` but at least 10 for the
            default model (digits).
        ratios: sketch widths ``b/d`` in ``(0, 1]``; ``b = max(1, round(ratio · d))``.
        noise_stds: std of the Gaussian noise added to the sketched message.
        attacks: names from :data:`fedsim.privacy.leakage.ATTACKS`.
        local_steps: client SGD steps ``K`` (the attacker unrolls them).
        lr: client step size.
        iterations: per attack, overriding :data:`DEFAULT_ITERATIONS`.
        seed: root seed of every stream.
        data_range: ``(lo, hi)`` of the pixels (PSNR range and the box constraint).
        figure_images: how many of the first images the figure shows per setting.
        progress: called with each row once it is measured.
        sketch_factory: ``(d, b) -> sketch`` builds the map of each width (None from it:
            the plain update, no sketch); the row's ``b`` is the map's output length
            (``d`` for the plain update). Default: a dense Gaussian ``R`` with ``N(0, 1/b)``
            entries from the grid's own stream (square at ``b/d = 1``).
        sketch_name: the ``sketch`` column of the rows made with ``sketch_factory``'s maps
            (``"none"`` where it gave None).

    Returns:
        The rows (dicts with the keys of :data:`COLUMNS`), in the CSV's order.

    References:
        See the module docstring.
    """
    for a in attacks:
        if a not in ATTACKS:
            raise ScenarioError("attacks", f"must be among {', '.join(ATTACKS)}, got {a!r}")
    for r in ratios:
        if not 0 < float(r) <= 1:
            raise ScenarioError("ratios", f"each b/d must be in (0, 1], got {r}")
    x_all, y_all = _as_images(images, labels)
    n, c, h, w = x_all.shape
    if num_classes is None:
        num_classes = max(int(y_all.max()) + 1, 10 if model_factory is None else 0)
    if model_factory is None:

        def model_factory(s: int) -> nn.Module:
            return victim_cnn(s, in_channels=c, image_size=h, num_classes=num_classes)

    its = dict(DEFAULT_ITERATIONS)
    its.update(iterations or {})
    model = model_factory(stream_seed(seed, "leakage/model"))
    d = sum(p.numel() for p in model.parameters())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lo, hi = data_range

    rows: list[dict] = []
    recon: dict[tuple, torch.Tensor] = {}
    for ratio in ratios:
        b = max(1, round(float(ratio) * d))
        if sketch_factory is None:
            sketch: Sketch | None = matrix_sketch(gaussian_sketch(d, b, _gen(seed, f"sketch/{b}")))
            width, kind = b, "dense"
        else:
            sketch = sketch_factory(d, b)
            with torch.no_grad():
                width = d if sketch is None else int(sketch(torch.zeros(d)).numel())
            kind = sketch_name if sketch is not None else "none"
        for steps in local_steps:
            for noise in noise_stds:
                threat = ThreatModel(
                    local_steps=int(steps), lr=lr, sketch=sketch, noise_std=float(noise)
                )
                for attack in attacks:
                    for i in range(n):
                        x, y = x_all[i : i + 1], y_all[i : i + 1]
                        obs = observe(model, x, y, threat, _gen(seed, f"noise/{b}/{steps}/{i}"))
                        res = run_attack(
                            attack,
                            model,
                            obs,
                            threat,
                            x_shape=tuple(x.shape),
                            num_classes=num_classes,
                            generator=_gen(seed, f"init/{i}"),
                            iterations=its[attack],
                            data_range=data_range,
                        )
                        row = {
                            "attack": attack,
                            "sketch": kind,
                            "b/d": float(ratio),
                            "b": width,
                            "d": d,
                            "noise": float(noise),
                            "steps": int(steps),
                            "image": i,
                            "label": int(y),
                            "psnr_db": psnr(res.x, x, hi - lo),
                            "label_acc": label_accuracy(res.labels, y),
                        }
                        rows.append(row)
                        if i < figure_images:
                            recon[(attack, float(ratio), int(steps), float(noise), i)] = res.x[0]
                        if progress is not None:
                            progress(row)

    with open(out / "leakage.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    _figure(
        x_all[:figure_images], recon, attacks, ratios, local_steps, noise_stds, data_range,
        out / "leakage_grid.png",
    )  # fmt: skip
    return rows


def _figure(
    originals: torch.Tensor,
    recon: dict[tuple, torch.Tensor],
    attacks: Sequence[str],
    ratios: Sequence[float],
    local_steps: Sequence[int],
    noise_stds: Sequence[float],
    data_range: tuple[float, float],
    path: Path,
) -> None:
    """Originals on top; one row per (b/d, steps, noise); one column block per attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = originals.shape[0]
    settings = [(r, s, z) for r in ratios for s in local_steps for z in noise_stds]
    nrows, ncols = 1 + len(settings), len(attacks) * (k + 1) - 1
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(0.75 * ncols + 1.6, 0.75 * nrows + 0.4), squeeze=False
    )
    lo, hi = data_range

    def show(ax, img: torch.Tensor) -> None:
        arr = img.detach().cpu().numpy()
        arr = arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))
        ax.imshow((arr - lo) / (hi - lo), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")

    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for a, attack in enumerate(attacks):
        base = a * (k + 1)
        for j in range(k):
            show(axes[0, base + j], originals[j])
        axes[0, base].set_title(f"{attack}: original", fontsize=8, loc="left")
        for r, (ratio, steps, noise) in enumerate(settings, start=1):
            for j in range(k):
                img = recon.get((attack, float(ratio), int(steps), float(noise), j))
                if img is not None:
                    show(axes[r, base + j], img)
    multi_steps = len(local_steps) > 1
    for r, (ratio, steps, noise) in enumerate(settings, start=1):
        text = f"b/d={ratio:g}\nσ={noise:g}" + (f"\nK={steps}" if multi_steps else "")
        axes[r, 0].set_ylabel(text, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle("gradient leakage: original (top) vs reconstruction", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Mean PSNR and label accuracy over images, per (attack, b/d, steps, noise).

    Args:
        rows: rows of :func:`run_leakage_grid`.

    Returns:
        One dict per setting with ``psnr_db`` (mean, infinite values capped at 150 dB
        for the mean), ``psnr_min_db``, ``label_acc`` and ``images``, in first-seen order.
    """
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["attack"], row["b/d"], row["steps"], row["noise"])
        groups.setdefault(key, []).append(row)
    out = []
    for (attack, ratio, steps, noise), rs in groups.items():
        ps = [min(r["psnr_db"], 150.0) for r in rs]
        out.append(
            {
                "attack": attack,
                "b/d": ratio,
                "steps": steps,
                "noise": noise,
                "psnr_db": sum(ps) / len(ps),
                "psnr_min_db": min(ps),
                "label_acc": sum(r["label_acc"] for r in rs) / len(rs),
                "images": len(rs),
            }
        )
    return out


def markdown_table(rows: Sequence[dict]) -> str:
    """Mean PSNR (dB) / label accuracy as a Markdown table: one row per (attack, b/d, steps),
    one column per noise std.

    Args:
        rows: rows of :func:`run_leakage_grid`.

    Returns:
        The table text.
    """
    summary = summarize(rows)
    noises = sorted({s["noise"] for s in summary})
    lines = [
        "| attack | b/d | K | " + " | ".join(f"σ = {z:g}" for z in noises) + " |",
        "|---|---|---|" + "---|" * len(noises),
    ]
    cells: dict[tuple, dict[float, str]] = {}
    for s in summary:
        key = (s["attack"], s["b/d"], s["steps"])
        cells.setdefault(key, {})[s["noise"]] = f"{s['psnr_db']:.1f} dB / {s['label_acc']:.0%}"
    for (attack, ratio, steps), by_noise in cells.items():
        vals = " | ".join(by_noise.get(z, "") for z in noises)
        lines.append(f"| {attack} | {ratio:g} | {steps} | {vals} |")
    return "\n".join(lines)


def digits_images(count: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` test images of the digits split drawn with ``seed`` (20 % test).

    Args:
        count: number of images.
        seed: root seed (the "data" stream draws the split).

    Returns:
        ``[count, 1, 8, 8]`` float32 in ``[0, 1]`` and ``[count]`` int64 labels.
    """
    from fedsim.data.digits import load_digits
    from fedsim.seeding import numpy_rng

    raw = load_digits(0.2, numpy_rng(seed, "data"))
    return raw.x_test[:count], raw.y_test[:count]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedsim.privacy.leakage_grid OUT_DIR [IMAGES]``: the docs' grid on digits."""
    import sys
    import time

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m fedsim.privacy.leakage_grid OUT_DIR [IMAGES=4]")
        return 2
    torch.set_num_threads(1)
    count = int(args[1]) if len(args) > 1 else 4
    x, y = digits_images(count)
    t0 = time.perf_counter()
    rows = run_leakage_grid(x, y, out_dir=args[0], seed=0)
    print(markdown_table(rows))
    print(f"\n{len(rows)} attacks in {time.perf_counter() - t0:.0f} s; wrote {args[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
