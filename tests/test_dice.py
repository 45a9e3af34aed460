"""Dice's stored statistics (mmctr_tf/layers/core.py::Dice, mmctr_tf/training/callbacks.py::DiceStatistics): after
training, the moving mean and variance that inference uses must be those of the layer's inputs on the training
data. `check_stored_dice_statistics` is applied to runs that other tests train anyway, one for every way the
project trains: fit on one replica killed and resumed, on two replicas (tests/test_training.py), with XLA (a DMAE,
tests/test_dmae.py), the multi-worker custom loop on two replicas, resumed (tests/test_multiworker.py)."""

import keras
import numpy as np
import tensorflow as tf

from mmctr_tf.data.datasets import Dataset
from mmctr_tf.layers.core import Dice, dice_layers, recording_dice_moments
from mmctr_tf.training.trainer import load_run

# Re-estimated from 4096 of the 16k training examples (DiceStatistics' default), against the whole split below:
# measured |mean error| / std <= 0.01 and |variance ratio - 1| <= 0.02 in the runs checked; Keras' own
# moving averages after the same runs are off by a variance ratio of 60-300 (momentum 0.99 from a variance of 1).
MEAN_TOL, VAR_TOL = 0.05, 0.1


def _split_arrays(data, split="train"):
    cols = {}
    for feats, _ in data.tf_dataset(split, 4096):
        for k, v in feats.items():
            cols.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in cols.items()}


def attention_dice_input_moments(model, x):
    """Per-channel mean and variance of the input of DIN's first attention Dice layer over the examples `x`,
    in numpy from the weights: W [q ; k ; q - k ; q * k] + b over every history slot (padding included, as
    BatchNormalization sees it), q the target's and k the history's id embeddings (zero at padded slots)."""
    emb = {n: model.embeddings[n].embeddings.numpy() for n in ("item_id", "cate_id")}
    q = np.concatenate([emb["item_id"][x["item_id"]], emb["cate_id"][x["cate_id"]]], -1)[:, None, :]
    k = np.concatenate([emb["item_id"][x["hist_item_id"]], emb["cate_id"][x["hist_cate_id"]]], -1)
    k = k * (np.arange(k.shape[1])[None, :] < x["hist_len"][:, None])[..., None]
    q = np.broadcast_to(q, k.shape)
    dense = model.backbone.attention.mlp.dense[0]
    h = np.concatenate([q, k, q - k, q * k], -1) @ dense.kernel.numpy() + dense.bias.numpy()
    h = h.reshape(-1, h.shape[-1]).astype(np.float64)
    return h.mean(0), h.var(0)


def check_stored_dice_statistics(run_dir, dataset):
    """The best epoch's weights of a DIN-backbone run (what run.evaluate and run.export load): its first attention
    Dice layer's moving mean and variance against the moments of its inputs on the whole training split."""
    model, _ = load_run(str(run_dir))
    dice = model.backbone.attention.mlp.acts[0]
    assert isinstance(dice, Dice)
    mean, var = attention_dice_input_moments(model, _split_arrays(Dataset(dataset)))
    np.testing.assert_array_less(np.abs(dice.bn.moving_mean.numpy() - mean) / np.sqrt(var), MEAN_TOL)
    np.testing.assert_array_less(np.abs(dice.bn.moving_variance.numpy() / var - 1), VAR_TOL)


def test_recording_normalises_with_batch_statistics_and_sums_the_calls():
    """Inside `recording_dice_moments` a Dice layer gives its training-mode output (batch statistics), leaves the
    stored statistics alone, and records count, sum and sum of squares of every call (checked against numpy)."""
    dice = Dice()
    x = tf.random.stateless_normal([4, 3], seed=[3, 4]) * 3.0 + 1.0
    dice(x)
    dice.alpha.assign([0.5, -0.2, 0.1])
    with recording_dice_moments([dice]) as records:
        got = dice(x, training=False).numpy()
        dice(x * 2.0, training=False)
    np.testing.assert_array_equal(dice.bn.moving_mean.numpy(), 0.0)
    np.testing.assert_array_equal(dice.bn.moving_variance.numpy(), 1.0)
    xn = x.numpy().astype(np.float64)
    z = (xn - xn.mean(0)) / np.sqrt(xn.var(0) + dice.epsilon)
    p = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(got, p * xn + (1 - p) * np.array([0.5, -0.2, 0.1]) * xn, rtol=1e-5, atol=1e-5)
    (n1, s1, q1), (n2, s2, q2) = [[t.numpy() for t in r] for r in records[0]]
    assert n1 == n2 == 4
    np.testing.assert_allclose(s1, xn.sum(0), rtol=1e-6)
    np.testing.assert_allclose(q2, (4 * xn * xn).sum(0), rtol=1e-6)
    assert dice(x, training=False).numpy() is not None and not records[0][2:]  # recording ended with the block
    seq = keras.Sequential([keras.layers.Dense(3), Dice(), keras.layers.Dense(2), Dice()])
    seq(x)
    assert len(dice_layers(seq)) == 2
