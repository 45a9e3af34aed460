"""Input pipeline benchmark: `python -m run.bench_input [--num_users=...] [--batch_size=1024] [--seq_len=50]`.

Writes one synthetic dataset uncompressed and GZIP into a temporary folder, then reads + batches + parses it
through the training pipeline and prints examples/s, next to DIN's training examples/s measured in the same run
(the pipeline should be >= 10x faster so training is never input-bound).
"""

from __future__ import annotations

import os
import tempfile

from absl import app, flags

from run import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_users", 3000, "Users of the benchmark dataset.")
flags.DEFINE_integer("seq_len", 50, "History length L.")
flags.DEFINE_float("seconds", 5.0, "Seconds of reading per measurement.")
flags.DEFINE_bool("with_din", True, "Also measure DIN training examples/s for the ratio.")


def main(argv):
    del argv
    common.quiet_tf()
    from mmctr_tf.data import synthetic
    from mmctr_tf.data.datasets import Dataset
    from mmctr_tf.training.bench import input_throughput, markdown_table, train_throughput

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        datasets = {}
        for comp in ("", "GZIP"):
            path = os.path.join(tmp, comp or "raw")
            synthetic.build(path, synthetic.SyntheticConfig(num_users=FLAGS.num_users, seq_len=FLAGS.seq_len,
                                                            compression=comp, num_shards=8), log=lambda *a: None)
            datasets[comp] = Dataset(path)
            r = input_throughput(datasets[comp].files("train"), datasets[comp].schema, FLAGS.batch_size,
                                 comp or None, FLAGS.seconds)
            rows.append([comp or "none", FLAGS.batch_size, FLAGS.seq_len, r["examples_per_sec"], r["ms_per_batch"]])
        headers = ["compression", "batch", "L", "examples/s", "ms/batch"]
        if FLAGS.with_din:
            din = train_throughput("din", datasets["GZIP"], {}, batch_size=FLAGS.batch_size, steps=20)
            headers.append("x DIN training")
            for r in rows:
                r.append(r[3] / din["examples_per_sec"])
            print(f"DIN training (same run): {din['examples_per_sec']:,.0f} examples/s")
    print(markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    app.run(main)
