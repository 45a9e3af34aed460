"""Shared fixtures. TensorFlow is imported once per pytest process; the CPU is split into two logical devices
before anything initialises TensorFlow, so MirroredStrategy can be tested with two replicas."""

import contextlib
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

MAX_WORKERS = 4  # each worker imports TensorFlow and builds its own session fixtures


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pytest.ini): one worker more than there are cores, at most MAX_WORKERS. Much of the suite is
    single-threaded Python (tracing, subprocesses starting): on 2 idle cores the full suite took 681.6 s with 3
    workers against 763.6 s with 2, the same code measured back to back (README, Tests)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores + 1))


def pytest_collection_modifyitems(config, items):
    """The tests marked `slow` first (each group keeps its order). pytest-xdist (`--dist loadgroup`) hands out the
    xdist groups of several tests first, then the single tests in this order: a long single test started last kept
    one worker busy for a minute after the others had run out of work (the CLI test, 55 s, ended 60 s after two of
    the three workers went idle in a timed run); the short tests now fill the end of the run."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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


@contextlib.contextmanager
def lock_holder(target):
    """Another live process holding the lock of the directory `target` (`mmctr_tf.locks`), as a second conversion or
    training would; yields the process. It is SIGKILLed on exit, so its lock file stays behind, stale."""
    code = ("import sys, time; from mmctr_tf import locks; held = locks.hold(sys.argv[1], 'a test holder'); "
            "held.__enter__(); print('held', flush=True); time.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
