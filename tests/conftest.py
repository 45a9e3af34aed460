"""Shared fixtures. TensorFlow is imported once per pytest process; the CPU is split into two logical devices
before anything initialises TensorFlow, so MirroredStrategy can be tested with two replicas."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A small synthetic dataset on disk (TFRecords + tables + manifest), shared by the tests of a session."""
    from mmctr_tf.data import synthetic

    path = str(tmp_path_factory.mktemp("data") / "small")
    # Few users with many impressions each, and a strong category-preference term: a world small enough for CI
    # in which DIN's history attention has something to learn within 3 epochs.
    cfg = synthetic.SyntheticConfig(story="attribute", num_users=400, num_items=300, impressions_per_user=50, dim=16,
                                    seq_len=20, max_hist=30, num_shards=2, seed=7, b_cate=2.0)
    synthetic.build(path, cfg, log=lambda *a: None)
    return path
