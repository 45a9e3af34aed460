"""Performance benchmark, one command, one table: `python -m run.bench --models=din,dmae,diff_msin [--jit=both]`.

Measured in the same run, on the same data (`--dataset`, default the synthetic default):
  * the input pipeline (read + batch + parse + prefetch) in examples/s and its ratio to DIN's training speed;
  * for each model and each XLA setting (`--jit=off|on|both`): steady-state training examples/s and ms/step
    (warm-up steps excluded; also the process's CPU time per step, which other jobs on the machine disturb less),
    the step time as a ratio to DIN's with the same XLA setting, SavedModel inference latency p50/p99 of the
    named-tensor signature at batch 1 / 256 / 1024, and the peak memory (max RSS) of the process that measured it;
  * on a GPU machine, `--mixed_precision` adds rows trained under Keras' `mixed_float16` policy;
  * `--optimizers=adam,lazy_adam` measures each model with each optimizer (default: `--optimizer`), and
    `--vocab_sizes=5000x4000,1000000x200000` at each vocabulary (users x items): the dataset's ids are sent to ids
    spread over tables of that size (`mmctr_tf.training.bench.spread_vocabulary`), so only the tables' cost changes;
    the step time (wall and CPU) is then also given as a ratio to the same model's at the first vocabulary.

Every (model, setting) is measured in its own child process, so the peak memory belongs to that model alone and one
model's XLA cache or allocator state cannot slow another. Nothing here asserts a speed: ratios are meaningful only
between rows of one run (this machine's absolute speed is noisy). `--out=bench.json` also writes the rows as JSON.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

from absl import app, flags

from run import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("bench_steps", 30, "Timed training steps per model (after --warmup_steps).")
flags.DEFINE_integer("warmup_steps", 5, "Untimed training steps (tracing, XLA compilation) before timing.")
flags.DEFINE_list("latency_batches", ["1", "256", "1024"], "Batch sizes for the serving latency (empty: no latency "
                  "measured).")
flags.DEFINE_enum("jit", "both", ["off", "on", "both"], "Measure without XLA, with XLA (--jit_compile), or both.")
flags.DEFINE_bool("mixed_precision", False, "GPU only: also measure under the mixed_float16 policy.")
flags.DEFINE_float("input_seconds", 5.0, "Seconds of reading for the input-pipeline measurement.")
flags.DEFINE_string("out", None, "Also write the rows as JSON to this file.")
flags.DEFINE_list("optimizers", None, "Optimizers to measure each model with (default: --optimizer).")
flags.DEFINE_list("vocab_sizes", None, "Vocabularies to measure at, 'USERSxITEMS' each, e.g. 1000000x200000 (at least "
                  "the dataset's own); the dataset's ids are spread over them. Default: the dataset as it is.")
flags.DEFINE_string("child", None, "Internal: measure one 'model:jit:precision:optimizer:vocab' and print its JSON.")

RESULT = "BENCH_RESULT "


def _vocab(text: str):
    """'USERSxITEMS' -> (users, items); 'data' (the dataset's own ids, not remapped) -> None."""
    if text == "data":
        return None
    try:
        users, items = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--vocab_sizes: '{text}' is not USERSxITEMS (e.g. 1000000x200000)") from None
    return users, items


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def measure_child(spec: str) -> dict:
    """Runs in the child process: one model under one setting."""
    import keras
    import tensorflow as tf

    from mmctr_tf.data.datasets import Dataset, ensure_dataset
    from mmctr_tf.training.bench import serving_latency, train_throughput

    name, jit, precision, optimizer, vocab = spec.split(":")
    if precision == "mixed_float16":
        keras.mixed_precision.set_global_policy("mixed_float16")
    data = Dataset(ensure_dataset(FLAGS.dataset, FLAGS.data_dir, log=lambda *a: None))
    hparams = common.accepted_model_hparams(name, log=lambda *a: None)
    r = train_throughput(name, data, hparams, FLAGS.batch_size, FLAGS.bench_steps, FLAGS.warmup_steps,
                         jit_compile=jit == "on", optimizer=optimizer, vocab=_vocab(vocab))
    schema = r["model"].schema
    feats, _ = next(iter(data.tf_dataset("test", 1024)))
    sample = {k: v.numpy() for k, v in feats.items()}
    batches = [int(b) for b in FLAGS.latency_batches]
    lat = serving_latency(r["model"], batches, sample=sample) if batches else []
    return {"model": name, "jit": jit == "on", "precision": precision, "optimizer": optimizer,
            "users": schema.vocab["user_id"] - 1, "items": schema.vocab["item_id"] - 1, "params": r["params"],
            "examples_per_sec": r["examples_per_sec"], "ms_per_step": r["ms_per_step"],
            "cpu_ms_per_step": r["cpu_ms_per_step"], "latency": lat,
            "peak_rss_mb": _peak_rss_mb(), "device": "GPU" if tf.config.list_logical_devices("GPU") else "CPU"}


def run_child(spec: str) -> dict:
    """Measures `spec` in a fresh process with this command's flags; returns its result dict."""
    flags_in = [a for a in sys.argv[1:] if not a.startswith(("--child", "--out"))]
    cmd = [sys.executable, "-m", "run.bench", f"--child={spec}", *flags_in]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    raise RuntimeError(f"run.bench: measuring {spec} failed (exit {proc.returncode}):\n{tail}")


def input_row() -> dict:
    from mmctr_tf.data.datasets import Dataset, ensure_dataset
    from mmctr_tf.training.bench import input_throughput

    data = Dataset(ensure_dataset(FLAGS.dataset, FLAGS.data_dir))
    r = input_throughput(data.files("train"), data.schema, FLAGS.batch_size, data.compression, FLAGS.input_seconds)
    return {"compression": data.compression or "none", "path": data.path, "seq_len": data.schema.seq_len, **r}


def _batches(v) -> bool:
    try:
        return all(int(b) >= 1 for b in v)  # empty: training only
    except ValueError:
        return False


CHECKS = {"bench_steps": (lambda v: v >= 1, ">= 1"), "warmup_steps": (lambda v: v >= 0, ">= 0"),
          "latency_batches": (_batches, "a list of integers >= 1 (or empty)"),
          "input_seconds": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0")}


def main(argv):
    del argv  # flags only; children get this command's own command line (sys.argv)
    bad = common.flag_error(["model", "models", "batch_size", "seed", *CHECKS], CHECKS)
    if bad:
        return common.fail(f"run.bench: {bad}")
    if FLAGS.print_config:
        print(common.config_in_force(models=FLAGS.models or [FLAGS.model]))
        return 0
    common.quiet_tf()
    if FLAGS.child:
        print(RESULT + json.dumps(measure_child(FLAGS.child)), flush=True)
        return 0
    from mmctr_tf.training.bench import markdown_table

    models = FLAGS.models or [FLAGS.model]
    models = ["din"] + [m for m in models if m != "din"]
    for m in models:
        common.accepted_model_hparams(m)  # unknown models fail (and dropped flags are reported) before measuring
    jits = {"off": ["off"], "on": ["on"], "both": ["off", "on"]}[FLAGS.jit]
    optimizers = FLAGS.optimizers or [FLAGS.optimizer]
    vocabs = FLAGS.vocab_sizes or ["data"]
    try:
        for v in vocabs:
            _vocab(v)
    except ValueError as e:
        return common.fail(f"run.bench: {e}")
    known = FLAGS["optimizer"].parser.enum_values
    unknown = sorted(set(optimizers) - set(known))
    if unknown:
        return common.fail(f"run.bench: --optimizers: unknown {', '.join(unknown)} (one of {', '.join(known)})")

    def specs_for(precision):
        return [f"{m}:{j}:{precision}:{o}:{v}" for j in jits for o in optimizers for v in vocabs for m in models]

    precisions = ["float32"]
    inp = input_row()
    gpu = False
    specs = specs_for("float32")
    rows, t0 = [], time.perf_counter()
    print(f"input pipeline ({inp['path']}, {inp['compression']}, batch {FLAGS.batch_size}): "
          f"{inp['examples_per_sec']:,.0f} examples/s", flush=True)
    i = 0
    while i < len(specs):
        spec = specs[i]
        print(f"[bench] {i + 1}/{len(specs)} {spec} ({time.perf_counter() - t0:.0f} s so far)", flush=True)
        r = run_child(spec)
        rows.append(r)
        gpu = gpu or r["device"] == "GPU"
        if FLAGS.mixed_precision and gpu and "mixed_float16" not in precisions:
            precisions.append("mixed_float16")
            specs += specs_for("mixed_float16")
        i += 1
    if FLAGS.mixed_precision and not gpu:
        print("[bench] --mixed_precision: no GPU here, mixed-precision rows not measured")

    def setting(r, *keys):
        return tuple(r[k] for k in ("jit", "precision", "optimizer", *keys))

    base = {setting(r, "users", "items"): r["ms_per_step"] for r in rows if r["model"] == "din"}
    first_vocab = {}
    for r in rows:  # rows run through the vocabularies in the order given
        first_vocab.setdefault(setting(r, "model"), r)
    batches = [int(b) for b in FLAGS.latency_batches]
    by_vocab = ["step time / first vocabulary", "CPU time / first vocabulary"] if len(vocabs) > 1 else []
    headers = (["model", "XLA", "precision", "optimizer", "users", "items", "params", "train ex/s", "ms/step",
                "CPU ms/step", "step time / DIN"] + by_vocab
               + [f"serve ms p50/p99 @{b}" for b in batches] + ["peak RSS MB"])
    table = []
    for r in rows:
        first = first_vocab[setting(r, "model")]
        r["step_time_vs_din"] = r["ms_per_step"] / base[setting(r, "users", "items")]
        r["step_time_vs_first_vocab"] = r["ms_per_step"] / first["ms_per_step"]
        r["cpu_time_vs_first_vocab"] = r["cpu_ms_per_step"] / first["cpu_ms_per_step"]
        table.append([r["model"], "on" if r["jit"] else "off", r["precision"], r["optimizer"], f"{r['users']:,}",
                      f"{r['items']:,}", r["params"], r["examples_per_sec"], r["ms_per_step"], r["cpu_ms_per_step"],
                      r["step_time_vs_din"]]
                     + ([r["step_time_vs_first_vocab"], r["cpu_time_vs_first_vocab"]] if by_vocab else [])
                     + [f"{x['p50_ms']:.2f} / {x['p99_ms']:.2f}" for x in r["latency"]] + [r["peak_rss_mb"]])
    inp["x_din_training"] = inp["examples_per_sec"] / rows[0]["examples_per_sec"]  # DIN, first setting
    print()
    print(f"device: {rows[0]['device']}; dataset {inp['path']}; batch {FLAGS.batch_size}; "
          f"{FLAGS.bench_steps} timed steps after {FLAGS.warmup_steps} warm-up steps")
    print(markdown_table(["input pipeline", "compression", "L", "examples/s", "ms/batch", "x DIN training"],
                         [["read + batch + parse + prefetch", inp["compression"], inp["seq_len"],
                           inp["examples_per_sec"], inp["ms_per_batch"], inp["x_din_training"]]]))
    print()
    print(markdown_table(headers, table))
    if FLAGS.out:
        from mmctr_tf.data.schema import write_json_atomic

        write_json_atomic(FLAGS.out, {"command": " ".join(["python -m run.bench"] + sys.argv[1:]), "input": inp,
                                      "rows": rows})
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_for_several_models)
