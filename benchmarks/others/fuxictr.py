"""FuxiCTR's DIEN and DIN, trained with the model's own ``fit`` / ``predict`` and its
``LongCTRDataLoader``.

The FuxiCTR wheel holds the library without its models; DIN and DIEN live in the model zoo of
the same release's source distribution (``model_zoo/LongCTR``), which the benchmark unpacks
into its environment (``<venv>/fuxictr-src``). That DIEN has no auxiliary loss, so it runs
with the loss off. Data go in the form that loader reads: a Parquet file of samples, one of
behaviour sequences (one row per sample here) and one of item features indexed by item.
``fit`` evaluates a validation loader once per epoch and saves a checkpoint; it gets 1,024
samples for that, which the train time includes.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

from benchmarks.others.common import Settings, Timer, worker_main
from benchmarks.synthetic import SyntheticData

LIBRARY = "FuxiCTR 2.3.10"
AUX_LOSS = {"dien": False, "din": False}
VALIDATION_SAMPLES = 1024


def model_zoo() -> Path:
    """The unpacked ``model_zoo/LongCTR`` folder of the installed release."""
    import fuxictr

    found = sorted(Path(sys.prefix, "fuxictr-src").glob(f"fuxictr-{fuxictr.__version__}"))
    if not found:
        raise FileNotFoundError(
            f"FuxiCTR {fuxictr.__version__} model zoo not unpacked under {sys.prefix}/fuxictr-src"
        )
    return found[0] / "model_zoo" / "LongCTR"


def _write_parquet(data: SyntheticData, work: Path) -> dict[str, str]:
    """Sample files per split, the behaviour sequences of all samples, the item table."""
    import pandas as pd

    paths, sequences, first = {}, [], 0
    for split in ("train", "test"):
        s = data.splits[split]
        n, off = s["label"].size, s["hist_offsets"]
        sequences += np.split(s["hist_items"].astype(np.int64), off[1:-1])
        frame = pd.DataFrame(
            {
                "user_index": np.arange(first, first + n),
                "user_id": s["user"].astype(np.int64),
                "item_index": s["item"].astype(np.int64),
                "seq_len": np.diff(off),
                "label": s["label"].astype(np.int64),  # its loader stacks all columns as one array
            }
        )
        first += n
        paths[split] = str(work / f"{split}.parquet")
        frame.to_parquet(paths[split])
        if split == "test":
            paths["valid"] = str(work / "valid.parquet")
            frame.iloc[:VALIDATION_SAMPLES].to_parquet(paths["valid"])
    paths["user_info"] = str(work / "user_info.parquet")
    pd.DataFrame({"full_item_seq": sequences}).to_parquet(paths["user_info"])
    items = np.arange(data.vocab_sizes["items"])
    paths["item_info"] = str(work / "item_info.parquet")
    item_table = {"item_index": items, "item_id": items, "cate_id": data.item_category}
    pd.DataFrame(item_table).astype(np.int64).to_parquet(paths["item_info"])
    return paths


def _feature_map(data: SyntheticData, settings: Settings, work: Path):
    from fuxictr.features import FeatureMap

    vocab, dim = data.vocab_sizes, settings.embedding_dim
    feature_map = FeatureMap("synthetic", str(work))
    meta = {"type": "meta"}
    feature_map.features = OrderedDict(
        user_index=meta,
        item_index=meta,
        seq_len=meta,
        user_id={"type": "categorical", "vocab_size": vocab["users"], "source": "user"},
        item_id={"type": "categorical", "vocab_size": vocab["items"], "source": "item"},
        cate_id={"type": "categorical", "vocab_size": vocab["categories"], "source": "item"},
    )
    for spec in feature_map.features.values():
        if spec["type"] == "categorical":
            spec.update(embedding_dim=dim, padding_idx=0)
    feature_map.labels = ["label"]
    feature_map.default_emb_dim = dim
    feature_map.num_fields = feature_map.get_num_fields()
    return feature_map


def run(data: SyntheticData, model: str, settings: Settings, timer: Timer) -> np.ndarray:
    sys.path.insert(0, str(model_zoo()))
    from DIEN import DIEN  # the release's model zoo, not this project
    from DIN import DIN
    from longctr_dataloader import LongCTRDataLoader

    work = Path(settings.work_dir)
    (work / "checkpoints" / "synthetic").mkdir(parents=True, exist_ok=True)  # fit saves there
    paths = _write_parquet(data, work)
    feature_map = _feature_map(data, settings, work)
    common = dict(
        gpu=-1,
        optimizer="adam",
        loss="binary_crossentropy",
        metrics=["AUC"],
        model_root=str(work / "checkpoints"),
        verbose=0,
        learning_rate=settings.learning_rate,
        embedding_dim=settings.embedding_dim,
        dnn_hidden_units=list(settings.mlp_sizes),
        dnn_activations="Dice",
    )
    if model == "dien":
        net = DIEN(
            feature_map,
            gru_type="AUGRU",
            attention_type="din_attention",
            attention_hidden_units=list(settings.attention_mlp_sizes),
            enable_sum_pooling=True,  # the paper's code feeds the summed history to the MLP
            **common,
        )
    else:
        net = DIN(feature_map, attention_hidden_units=list(settings.attention_mlp_sizes), **common)

    def loader(split: str, batch_size: int, shuffle: bool):
        return LongCTRDataLoader(
            feature_map,
            paths[split],
            paths["user_info"],
            paths["item_info"],
            batch_size=batch_size,
            shuffle=shuffle,
            max_len=settings.max_history,
            padding="post",  # DIEN packs sequences by length, which needs them left-aligned
        )

    train = loader("train", settings.batch_size, shuffle=True)
    valid = loader("valid", settings.score_batch_size, shuffle=False)
    test = loader("test", settings.score_batch_size, shuffle=False)

    with timer("train"):
        net.fit(train, epochs=1, validation_data=valid)
    return timer.repeat("score", settings.score_repeats, lambda: net.predict(test))


if __name__ == "__main__":
    worker_main(sys.modules[__name__])
