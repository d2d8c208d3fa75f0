"""Learning curves of a run as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_learning_curves(records: list[dict[str, Any]], out: Path, title: str = "") -> None:
    """Training loss (left) and validation AUC / GAUC (right) against the training step."""
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "eval" and r["split"] == "valid"]
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(10, 4))

    ax_loss.plot([r["step"] for r in train], [r["bce_loss"] for r in train], label="click loss")
    if any(r["aux_loss"] is not None for r in train):
        steps = [r["step"] for r in train if r["aux_loss"] is not None]
        ax_loss.plot(
            steps,
            [r["aux_loss"] for r in train if r["aux_loss"] is not None],
            label="auxiliary loss",
        )
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()

    ax_auc.plot([r["step"] for r in valid], [r["auc"] for r in valid], "o-", label="AUC")
    ax_auc.plot([r["step"] for r in valid], [r["gauc"] for r in valid], "s--", label="GAUC")
    ax_auc.set_xlabel("step")
    ax_auc.set_ylabel("validation")
    ax_auc.legend()

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
