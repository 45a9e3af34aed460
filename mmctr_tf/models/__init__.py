"""Model registry: `build_model(name, schema, **hparams)` passes each model the hyper-parameters it accepts."""

from __future__ import annotations

import inspect

from mmctr_tf.models.base import CTRModel, dummy_batch
from mmctr_tf.models.baselines import BST, FM, LR, DeepFM, DINSimTier, GRU4Rec, WideDeep, YouTubeNet
from mmctr_tf.models.diff_msin import DiffMSIN
from mmctr_tf.models.din import DIN, MMConcat
from mmctr_tf.models.dmae import DMAE

MODELS = {"din": DIN, "mm_concat": MMConcat, "dmae": DMAE, "diff_msin": DiffMSIN,
          "lr": LR, "fm": FM, "deepfm": DeepFM, "wide_deep": WideDeep, "youtubenet": YouTubeNet, "gru4rec": GRU4Rec,
          "bst": BST, "simtier": DINSimTier}


def model_class(name: str):
    if name not in MODELS:
        raise ValueError(f"unknown --model '{name}' (choose one of {', '.join(sorted(MODELS))})")
    return MODELS[name]


def accepted_hparams(cls) -> set:
    names = set()
    for klass in inspect.getmro(cls):
        if klass is CTRModel.__mro__[1]:  # stop at keras.Model
            break
        if "__init__" in vars(klass):
            names |= {p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "schema", "kwargs")}
    return names - set(getattr(cls, "fixed_hparams", ()))  # base-class arguments the model fixes (LR: emb_dim)


def build_model(name: str, schema, tables=None, **hparams) -> CTRModel:
    """Builds (and runs once, so weights exist) a registered model; loads frozen tables if given."""
    cls = model_class(name)
    ok = accepted_hparams(cls)
    model = cls(schema, **{k: v for k, v in hparams.items() if k in ok and v is not None}, name=name)
    model(dummy_batch(model.schema))
    if tables is not None:
        model.set_tables(tables)
    return model


__all__ = ["MODELS", "CTRModel", "build_model", "dummy_batch", "model_class"]
