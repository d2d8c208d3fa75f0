"""DeepCTR-Torch's DIEN and DIN, trained with the model's own ``compile`` / ``fit`` /
``predict``.

Inputs follow the library's convention: a dict of arrays, histories padded to a fixed 100
steps, ``hist_<name>`` for a behaviour feature and ``neg_hist_<name>`` for its auxiliary-loss
negatives. DIEN uses AUGRU with negative sampling (its auxiliary loss) at weight 1. Its GRU
width is the item width (36), not configurable. Its output MLP uses PReLU: its Dice layer
rejects the 2-D input of that MLP (an assertion in its Dice.forward).
"""

from __future__ import annotations

import sys

import numpy as np

from benchmarks.others.common import Settings, Timer, padded, worker_main
from benchmarks.synthetic import SyntheticData

LIBRARY = "DeepCTR-Torch 0.3.0"
AUX_LOSS = {"dien": True, "din": False}


def _inputs(data: SyntheticData, split: str, width: int) -> dict[str, np.ndarray]:
    s = data.splits[split]
    off = s["hist_offsets"]
    return {
        "user": s["user"].astype(np.int64),
        "item": s["item"].astype(np.int64),
        "cate": s["category"].astype(np.int64),
        "hist_item": padded(off, s["hist_items"], width),
        "hist_cate": padded(off, s["hist_cats"], width),
        "neg_hist_item": padded(off, s["neg_items"], width),
        "neg_hist_cate": padded(off, s["neg_cats"], width),
        "seq_length": np.minimum(np.diff(off), width),
    }


def _feature_columns(data: SyntheticData, settings: Settings, negatives: bool) -> list:
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat

    vocab, dim, width = data.vocab_sizes, settings.embedding_dim, settings.max_history
    columns = [
        SparseFeat("user", vocab["users"], embedding_dim=dim),
        SparseFeat("item", vocab["items"], embedding_dim=dim),
        SparseFeat("cate", vocab["categories"], embedding_dim=dim),
    ]
    prefixes = ["hist_", "neg_hist_"] if negatives else ["hist_"]
    for prefix in prefixes:
        for name, size in (("item", vocab["items"]), ("cate", vocab["categories"])):
            feat = SparseFeat(prefix + name, size, embedding_dim=dim, embedding_name=name)
            columns.append(VarLenSparseFeat(feat, maxlen=width, length_name="seq_length"))
    return columns


def run(data: SyntheticData, model: str, settings: Settings, timer: Timer) -> np.ndarray:
    from deepctr_torch.models import DIEN, DIN

    dien = model == "dien"
    columns = _feature_columns(data, settings, negatives=dien)
    common = dict(dnn_hidden_units=settings.mlp_sizes, dnn_activation="prelu", seed=settings.seed)
    if dien:
        net = DIEN(
            columns,
            ["item", "cate"],
            gru_type="AUGRU",
            use_negsampling=True,
            alpha=1.0,
            att_hidden_units=settings.attention_mlp_sizes,
            **common,
        )
    else:
        net = DIN(columns, ["item", "cate"], att_hidden_size=settings.attention_mlp_sizes, **common)
    net.compile("adam", "binary_crossentropy")
    train = _inputs(data, "train", settings.max_history)
    test = _inputs(data, "test", settings.max_history)
    label = data.splits["train"]["label"]

    with timer("train"):
        net.fit(train, label, batch_size=settings.batch_size, epochs=1, verbose=0)
    return timer.repeat(
        "score",
        settings.score_repeats,
        lambda: net.predict(test, batch_size=settings.score_batch_size),
    )


if __name__ == "__main__":
    worker_main(sys.modules[__name__])
