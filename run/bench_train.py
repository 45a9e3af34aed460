"""Training and serving benchmark: `python -m run.bench_train --models=din,dmae,diff_msin [--jit_compile]`.

For each model, in one process and on the same data: steady-state training examples/s and ms/step (warm-up
excluded), the ratio of its step time to DIN's, and inference latency p50/p99 through the exported SavedModel's
named-tensor signature at batch 1 / 256 / 1024. Only ratios within one run are comparable.
"""

from __future__ import annotations

from absl import app, flags

from run import common

FLAGS = flags.FLAGS
flags.DEFINE_list("models", None, "Models to compare (default: --model). DIN is added for the ratio.")
flags.DEFINE_integer("bench_steps", 30, "Timed training steps per model (after 5 warm-up steps).")
flags.DEFINE_list("latency_batches", ["1", "256", "1024"], "Batch sizes for the serving latency.")


def main(argv):
    del argv
    common.quiet_tf()
    from mmctr_tf.data.datasets import Dataset, ensure_dataset
    from mmctr_tf.training.bench import markdown_table, serving_latency, train_throughput

    models = FLAGS.models or [FLAGS.model]
    if "din" not in models:
        models = ["din"] + models
    data = Dataset(ensure_dataset(FLAGS.dataset, FLAGS.data_dir))
    feats, _ = next(iter(data.tf_dataset("test", 1024)))
    sample = {k: v.numpy() for k, v in feats.items()}
    batches = [int(b) for b in FLAGS.latency_batches]
    headers = ["model", "params", "train ex/s", "ms/step", "step time / DIN"] + [f"serve ms p50/p99 @{b}" for b in batches]
    print(f"dataset {data.path}, batch {FLAGS.batch_size}, jit_compile={FLAGS.jit_compile}", flush=True)
    rows, base = [], None
    for name in models:
        r = train_throughput(name, data, common.model_hparams(name), FLAGS.batch_size, FLAGS.bench_steps, jit_compile=FLAGS.jit_compile)
        base = base or r["ms_per_step"]
        lat = serving_latency(r["model"], batches, sample=sample)
        rows.append([name, r["params"], r["examples_per_sec"], r["ms_per_step"], r["ms_per_step"] / base]
                    + [f"{x['p50_ms']:.2f} / {x['p99_ms']:.2f}" for x in lat])
        print(markdown_table(headers, rows[-1:]).splitlines()[-1], flush=True)  # each row as soon as measured
    print()
    print(markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    app.run(main)
