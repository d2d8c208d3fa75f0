"""The models of the DIEN paper, built by name from a :class:`~dien.config.ModelConfig`.

=============  ====================================================================
name           model
=============  ====================================================================
base           BaseModel: embeddings and an MLP over the sum-pooled history
wide_deep      Wide&Deep: BaseModel's MLP plus a wide linear part over the ids
pnn            PNN: pairwise inner products of field embeddings before the MLP
din            DIN: attention-weighted pooling of the behaviours
gru_att        two-layer GRU with attention pooling
gru_aigru      GRU interest extractor + AIGRU evolution, no auxiliary loss
gru_agru       GRU interest extractor + AGRU evolution, no auxiliary loss
gru_augru      GRU interest extractor + AUGRU evolution, no auxiliary loss
dien           GRU interest extractor + auxiliary loss (alpha 1) + AUGRU evolution
=============  ====================================================================

``config.evolution_cell`` overrides the cell of the last four; ``config.aux_loss_alpha``
overrides alpha (0 turns the auxiliary loss off). Both are errors for the other models.
"""

from __future__ import annotations

from dien.config import MODEL_NAMES, ConfigError, ModelConfig
from dien.data.batch import VocabSizes
from dien.models.base import BaseModel
from dien.models.ctr import CTRModel, HistoryEncoding, ModelOutput
from dien.models.dien import DIEN
from dien.models.din import DIN
from dien.models.gru_att import GRUAttention
from dien.models.pnn import PNN
from dien.models.wide_deep import WideDeep

__all__ = [
    "BaseModel",
    "CTRModel",
    "DIEN",
    "DIN",
    "DIEN_FAMILY_CELLS",
    "GRUAttention",
    "HistoryEncoding",
    "ModelOutput",
    "PNN",
    "WideDeep",
    "build_model",
    "resolved_aux_loss_alpha",
]

DIEN_FAMILY_CELLS = {
    "gru_aigru": "aigru",
    "gru_agru": "agru",
    "gru_augru": "augru",
    "dien": "augru",
}
OTHER_MODELS: dict[str, type[CTRModel]] = {
    "base": BaseModel,
    "wide_deep": WideDeep,
    "pnn": PNN,
    "din": DIN,
    "gru_att": GRUAttention,
}


def resolved_aux_loss_alpha(config: ModelConfig) -> float:
    """The auxiliary-loss weight: the config's, or the model's default (1 for dien, else 0)."""
    if config.aux_loss_alpha is not None:
        return float(config.aux_loss_alpha)
    return 1.0 if config.name == "dien" else 0.0


def build_model(config: ModelConfig, vocab: VocabSizes) -> CTRModel:
    """The model named ``config.name`` with its defaults resolved; a clear error otherwise."""
    if config.name not in MODEL_NAMES:
        raise ConfigError(
            f"model.name must be one of {', '.join(MODEL_NAMES)}, got {config.name!r}"
        )
    alpha = resolved_aux_loss_alpha(config)
    if config.name in DIEN_FAMILY_CELLS:
        cell = config.evolution_cell or DIEN_FAMILY_CELLS[config.name]
        return DIEN(config, vocab, aux_loss_alpha=alpha, cell=cell)
    if config.evolution_cell is not None:
        raise ConfigError(
            f"model.evolution_cell applies only to {', '.join(DIEN_FAMILY_CELLS)}; "
            f"model {config.name!r} has no interest-evolution layer"
        )
    if alpha > 0:
        raise ConfigError(
            f"model.aux_loss_alpha > 0 needs a GRU interest extractor with the auxiliary loss "
            f"({', '.join(DIEN_FAMILY_CELLS)}); model {config.name!r} has none"
        )
    return OTHER_MODELS[config.name](config, vocab)
