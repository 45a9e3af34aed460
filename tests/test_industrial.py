"""DMAE's industrial setup (configs/dmae_industrial.cfg, DMAE paper §5.2): the configuration the paper gives, and
GAUC per request reported by run.train for data with request ids."""

import json

import numpy as np
import pytest
from absl.testing import flagsaver

from mmctr_tf.data import synthetic
from mmctr_tf.data.datasets import Dataset
from mmctr_tf.models import build_model
from mmctr_tf.training.trainer import TrainConfig, load_run, train
from run import common


@pytest.fixture(scope="module")
def industrial_dataset(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("industrial") / "ind")
    cfg = synthetic.SyntheticConfig(num_users=200, num_items=200, impressions_per_user=16, dim=8, seq_len=64,
                                    max_hist=40, num_shards=1, variant="industrial", seed=3)
    synthetic.build(path, cfg, log=lambda *a: None)
    return path


def test_industrial_config_is_the_papers(industrial_dataset):
    """ID embeddings 8, DNN 512x256x64x1, lazy Adam, lr 1e-3 with decay 0.9, on synthetic_industrial."""
    with flagsaver.flagsaver():
        common.FLAGS.unparse_flags()
        common.FLAGS(common.with_config_files(["prog", "--model=dmae", "--flagfile=configs/dmae_industrial.cfg"]))
        cfg, hparams = common.train_config(), common.hparams_from_flags()
    assert (cfg.dataset, cfg.optimizer, cfg.learning_rate, cfg.lr_decay) == ("synthetic_industrial", "lazy_adam",
                                                                             1e-3, 0.9)
    data = Dataset(industrial_dataset)
    model = build_model("dmae", data.schema, **hparams)
    assert [d.units for d in model.dnn.dense] + [model.dnn.out.units] == [512, 256, 64, 1]
    assert {name: e.output_dim for name, e in model.embeddings.items()} == {"user_id": 8, "item_id": 8, "cate_id": 8}


def _request_gauc(labels, probs, groups):
    """Impression-weighted mean over requests with both classes of the pairwise AUC (ties count 1/2)."""
    total = weight = 0.0
    for g in np.unique(groups):
        y, p = labels[groups == g], probs[groups == g]
        pos, neg = p[y == 1], p[y == 0]
        if len(pos) and len(neg):
            pairs = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
            total += len(y) * pairs.mean()
            weight += len(y)
    return total / weight


@pytest.mark.slow
def test_train_reports_request_gauc(industrial_dataset, tmp_path):
    """run.train's metrics.json (and its last log line) carry GAUC per request on data with request ids, equal to a
    brute-force computation from the best checkpoint's predictions."""
    run_dir = tmp_path / "run"
    logs = []
    result = train(TrainConfig(model="lr", dataset=industrial_dataset, run_dir=str(run_dir), epochs=1,
                               steps_per_epoch=3, batch_size=128, learning_rate=0.05, optimizer="lazy_adam",
                               verbose=0), {}, log=logs.append)
    assert "GAUC(request)" in logs[-1]
    with open(run_dir / "metrics.json") as f:
        test = json.load(f)["test"]
    model, _ = load_run(str(run_dir))
    labels, probs, groups = [], [], []
    for feats, label in Dataset(industrial_dataset).tf_dataset("test", 512):
        probs.append(model(feats, training=False).numpy())
        labels.append(label.numpy())
        groups.append(feats["request_id"].numpy())
    labels, probs, groups = (np.concatenate(a) for a in (labels, probs, groups))
    assert len(np.unique(groups)) < len(groups)  # requests of several impressions
    np.testing.assert_allclose(test["gauc_request"], _request_gauc(labels, probs, groups), rtol=0, atol=1e-6)
    assert result["test"]["gauc_request"] == test["gauc_request"]
