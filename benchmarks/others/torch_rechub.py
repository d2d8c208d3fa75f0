"""torch-rechub's DIEN and DIN, trained with its ``CTRTrainer`` (``fit`` / ``predict``).

Inputs follow the library's convention: a dict of arrays with histories padded to a fixed 100
steps, the target features, and for DIEN one negative-behaviour feature per history feature
sharing the target's embedding table. Its DIEN runs one GRU and one AUGRU per behaviour
feature (item and category), each as wide as that feature's embedding (18): GRU width is not
configurable. Auxiliary loss weight 1 (library default 0.2).
"""

from __future__ import annotations

import sys

import numpy as np

from benchmarks.others.common import Settings, Timer, padded, worker_main
from benchmarks.synthetic import SyntheticData

LIBRARY = "torch-rechub 0.9.0"
AUX_LOSS = {"dien": True, "din": False}


def _inputs(data: SyntheticData, split: str, width: int) -> dict[str, np.ndarray]:
    s = data.splits[split]
    off = s["hist_offsets"]
    return {
        "user": s["user"].astype(np.int64),
        "target_item": s["item"].astype(np.int64),
        "target_cate": s["category"].astype(np.int64),
        "hist_item": padded(off, s["hist_items"], width),
        "hist_cate": padded(off, s["hist_cats"], width),
        "neg_hist_item": padded(off, s["neg_items"], width),
        "neg_hist_cate": padded(off, s["neg_cats"], width),
    }


def run(data: SyntheticData, model: str, settings: Settings, timer: Timer) -> np.ndarray:
    import torch
    from torch.utils.data import DataLoader
    from torch_rechub.basic.features import SequenceFeature, SparseFeature
    from torch_rechub.models.ranking import DIEN, DIN
    from torch_rechub.trainers import CTRTrainer
    from torch_rechub.utils.data import TorchDataset

    vocab, dim = data.vocab_sizes, settings.embedding_dim
    user = [SparseFeature("user", vocab["users"], embed_dim=dim)]
    targets = [
        SparseFeature("target_item", vocab["items"], embed_dim=dim),
        SparseFeature("target_cate", vocab["categories"], embed_dim=dim),
    ]

    def sequences(prefix: str) -> list:
        return [
            SequenceFeature(
                f"{prefix}_{name}",
                size,
                embed_dim=dim,
                pooling="concat",
                shared_with=f"target_{name}",
                padding_idx=0,
            )
            for name, size in (("item", vocab["items"]), ("cate", vocab["categories"]))
        ]

    mlp = {"dims": list(settings.mlp_sizes)}  # the models fix its activation to Dice
    if model == "dien":
        net = DIEN(user, sequences("hist"), sequences("neg_hist"), targets, mlp, alpha=1.0)
    else:
        attention = {"dims": list(settings.attention_mlp_sizes), "activation": "dice"}
        net = DIN(user, sequences("hist"), targets, mlp, attention)
    trainer = CTRTrainer(
        net,
        optimizer_params={"lr": settings.learning_rate, "weight_decay": 0.0},
        n_epoch=1,
        device="cpu",
        loss_mode=model != "dien",  # False: the model returns (prediction, auxiliary loss)
        model_path=settings.work_dir,
    )
    train_x = _inputs(data, "train", settings.max_history)
    test_x = _inputs(data, "test", settings.max_history)
    train_y = data.splits["train"]["label"]
    test_y = data.splits["test"]["label"]
    generator = torch.Generator().manual_seed(settings.seed)
    train = DataLoader(
        TorchDataset(train_x, train_y),
        batch_size=settings.batch_size,
        shuffle=True,
        generator=generator,
    )
    test = DataLoader(TorchDataset(test_x, test_y), batch_size=settings.score_batch_size)

    with timer("train"):
        trainer.fit(train)
    scores = timer.repeat(
        "score", settings.score_repeats, lambda: trainer.predict(trainer.model, test)
    )
    return np.asarray(scores)


if __name__ == "__main__":
    worker_main(sys.modules[__name__])
