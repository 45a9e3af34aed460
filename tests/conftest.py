"""Shared fixtures. TensorFlow is imported once per process that runs tests; there the CPU is split into two logical
devices before anything initialises TensorFlow, so MirroredStrategy can be tested with two replicas."""

import contextlib
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The XLA tests check that a training step compiles and computes what the graph computes; LLVM's optimisation level
# only changes how fast the generated code runs. Alone (`-n 0`), the Diff-MSIN XLA test took 16.2 s at level 0
# against 19.0 s at the default.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import pytest  # noqa: E402

MAX_WORKERS = 4  # each worker imports TensorFlow and builds its own session fixtures


def pytest_configure(config):
    """Two logical CPU devices in every process that runs tests (the pytest-xdist workers, or pytest itself with
    `-n 0`). pytest-xdist's controller only hands tests out: it does not import TensorFlow, which took 6 s there
    before any worker started."""
    if config.getoption("dist", "no") != "no" and not hasattr(config, "workerinput"):
        return
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pytest.ini): one worker per core, at most MAX_WORKERS. On the 2-core machine (AMD EPYC), the full
    suite took 300.0, 287.6 and 343.3 s with 2 workers against 311.1, 327.0 and 347.6 s with 3 (three pairs, run
    back to back in alternating order), with 9-20% less CPU: a third TensorFlow process on two cores spends more in
    waiting threads than it gains in overlap (README, Tests). An earlier, slower machine had measured the reverse."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """A pytest-xdist worker ends at once after its last message to the controller (sent at the end of
    `pytest_sessionfinish`, before this hook). After the whole suite, a worker's interpreter took 8 s to shut down
    (the TensorFlow objects of ~150 tests finalised one by one: 301-303 s for the last test, 313 s at the end in a
    timed run) while the controller waited for it; the controller reads nothing from a worker after that message."""
    if hasattr(config, "workerinput"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


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


_RUN_MAINS = """if 1:
    import contextlib, io, json, sys
    from run import bench, common, compare, evaluate, export, train
    parse = {"train": common.parse_with_configs, "compare": common.parse_for_several_models,
             "bench": common.parse_for_several_models, "evaluate": common.FLAGS, "export": common.FLAGS}
    for line in sys.stdin:
        sys.argv = json.loads(line)
        cmd = sys.argv[0].split(".")[1]
        common.FLAGS.unparse_flags()
        parse[cmd](list(sys.argv))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = globals()[cmd].main([])
        print(json.dumps([rc, err.getvalue(), "tensorflow" in sys.modules]), flush=True)
"""


def run_mains(argvs):
    """Runs each argv (`run.<command>` first, then its flags) as that command would, in one fresh process: flags parsed
    as the command parses them (config files included), then its `main`. Returns [(exit code, stderr, whether
    TensorFlow had been imported by then)], one per argv, for the flag checks that must come before TensorFlow."""
    r = subprocess.run([sys.executable, "-c", _RUN_MAINS], cwd=REPO, capture_output=True, text=True, timeout=120,
                       input="".join(json.dumps(list(a)) + "\n" for a in argvs))  # TF_CPP_MIN_LOG_LEVEL: above
    assert r.returncode == 0, r.stderr[-3000:]
    results = [tuple(json.loads(line)) for line in r.stdout.splitlines()]
    assert len(results) == len(argvs), r.stdout
    return results


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
