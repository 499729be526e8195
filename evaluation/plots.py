"""PNG plots of an evaluation: ROC curve(s), confusion matrix, training curves (matplotlib, Agg)."""
from __future__ import annotations

import io
import itertools
from typing import Mapping, Optional, Sequence

import numpy as np

from covid_cxr.evaluation import metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out.getvalue()


STORED_THRESHOLD = "stored threshold"
# An older three-class model's label is its most probable class: no threshold on P(covid) puts it there.
ARGMAX_DECISION = "argmax decision (no COVID threshold)"


def roc_png(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], operating_point: Optional[tuple[float, float]] = None,
            title: str = "ROC", point_label: str = STORED_THRESHOLD) -> bytes:
    """curves: (label, y_true 0/1, scores); operating_point: (1 - specificity, sensitivity) of the model's
    decision, named in the legend by `point_label`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.7", linewidth=1)
    for label, y, s in curves:
        auc = metrics.roc_auc(y, s)
        if auc is None:
            continue
        fpr, tpr, _ = metrics.roc_curve(y, s)
        ax.plot(fpr, tpr, linewidth=1.8, label=f"{label} (AUC {auc:.3f})")
    if operating_point is not None:
        ax.plot([operating_point[0]], [operating_point[1]], "o", color="black", label=point_label)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    if len(ax.lines) <= 1 + (operating_point is not None):  # only the diagonal (and the point)
        ax.text(0.5, 0.55, "ROC undefined:\nthe data holds one class only", ha="center", va="center", fontsize=9)
    ax.grid(alpha=0.3)
    return _png(fig)


def confusion_png(cm: np.ndarray, classes: Sequence[str], title: str = "Confusion matrix") -> bytes:
    plt = _pyplot()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(classes), 1.3 + 1.0 * len(classes)))
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center",
                    color="white" if share[i, j] > 0.6 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _png(fig)


def gallery_png(grays: Sequence[np.ndarray], captions: Sequence[str], title: str = "", columns: int = 6) -> bytes:
    """Grey-scale images in a grid, each with its caption under it (aspect kept, no axes)."""
    plt = _pyplot()
    columns = max(1, min(columns, len(grays)))
    rows = -(-len(grays) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, gray, text in zip(axes.ravel(), grays, captions):
        image = ax.imshow(gray, cmap="gray", vmin=0, vmax=255)
        # Hung from the image's own lower edge: a title is lifted by the title pad onto a tall film's last rows.
        ax.annotate(text, xy=(0.5, 0), xycoords=image, xytext=(0, -3), textcoords="offset points",
                    ha="center", va="top", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def numeric_series(history: Mapping) -> dict[str, list[float]]:
    """The plottable series of a Keras-style history ({name: [values per epoch]}), bookkeeping removed."""
    out = {}
    for name, values in (history or {}).items():
        if name in ("epoch", "phase", "member", "member_names", "kept", "lr", "learning_rate") or not isinstance(values, (list, tuple)) or not values:
            continue
        try:
            out[name] = [float(v) for v in values]
        except (TypeError, ValueError):
            continue
    return out


def _member_spans(history: Mapping) -> list[tuple[str, tuple[int, int]]]:
    """[(family name, (first epoch index, last epoch index))] per ensemble member; [] for one model."""
    members, names = history.get("member") or [], history.get("member_names") or []
    spans = []
    for index, name in enumerate(names):
        epochs = [i for i, m in enumerate(members) if m == index]
        if epochs:
            spans.append((str(name), (epochs[0], epochs[-1])))
    return spans


def _own_epochs(history: Mapping, length: int) -> Optional[list[int]]:
    """Each plotted epoch's number within its own phase and member (1-based), as the training table
    counts them; None when the history does not restart its count (one phase of one model)."""
    epochs = history.get("epoch") or []
    if len(epochs) < length or all(e == i for i, e in enumerate(epochs[:length])):
        return None
    return [int(e) + 1 for e in epochs[:length]]


def _own_epoch_ticks(own_epochs: Sequence[int]) -> list[int]:
    """Plot positions (1-based) to label: each stretch's epochs at a round step and its last (unless just
    past a labelled one); a later stretch's epoch 1 only at a step of 1 (it would print over the
    previous stretch's last)."""
    longest = max(own_epochs)
    step = next((step for step, most in ((1, 6), (2, 12), (5, 30)) if longest <= most), 10)
    ticks = []
    for i, own in enumerate(own_epochs):
        last = i + 1 == len(own_epochs) or own_epochs[i + 1] == 1
        first_of_later = own == 1 and i > 0
        crowded = bool(ticks) and i + 1 - ticks[-1] < step / 2  # a last epoch just past a round one
        if (own % step == 0 or own == 1 or (last and not crowded)) and not (first_of_later and step > 1):
            ticks.append(i + 1)
    return ticks


def history_png(history: Mapping) -> Optional[bytes]:
    """One panel per metric (training and val_ curves together); phase (or ensemble member) changes as
    dotted lines; a ring on each curve at the epoch whose weights are served (per member)."""
    series = numeric_series(history)
    bases = sorted({n[4:] if n.startswith("val_") else n for n in series}, key=lambda n: (n != "loss", n))
    if not bases:
        return None
    plt = _pyplot()
    cols = min(3, len(bases))
    rows = -(-len(bases) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    # A new phase, or the next ensemble member (trainer.training.concatenate_histories).
    stages = list(zip(history.get("phase", []) or [], history.get("member", []) or itertools.repeat(0)))
    changes = [i + 0.5 for i in range(len(stages) - 1) if stages[i] != stages[i + 1]]
    member_spans = _member_spans(history)
    kept = [i for i, flag in enumerate(history.get("kept") or []) if flag == 1.0]  # trainer.training.KEPT
    own_epochs = _own_epochs(history, max(len(values) for values in series.values()))
    for ax, base in zip(axes.ravel(), bases):
        for name, style in ((base, "-"), ("val_" + base, "--")):
            if name in series:
                line, = ax.plot(range(1, len(series[name]) + 1), series[name], style, marker=".", label=name)
                served = [i for i in kept if i < len(series[name])]
                ax.plot([i + 1 for i in served], [series[name][i] for i in served], "o", markersize=8,
                        markerfacecolor="none", color=line.get_color(), label="weights served" if style == "--" else None)
        for c in changes:
            ax.axvline(c + 1, color="0.6", linestyle=":", linewidth=1)
        for name, (first, last) in member_spans:  # which family each stretch of epochs belongs to
            # Above the frame: inside it the name sat on the curves that reach 1.0.
            ax.text((first + last) / 2 + 1, 1.0, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=7, color="0.35")
        ax.set_title(base, pad=14 if member_spans else None)
        if own_epochs:  # tick labels count each phase's and member's epochs, as the table's "epoch N" does
            ticks = _own_epoch_ticks(own_epochs)
            ax.set_xticks(ticks, [str(own_epochs[x - 1]) for x in ticks])
            ax.set_xlabel("epoch (of each phase and member)")
        else:
            ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(bases):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)
