"""Adds a text-vector table to a converted dataset by embedding item titles with a LOCAL sentence-embedding model.

  python -m run.embed_text --dataset=electro --model=/path/to/all-MiniLM-L6-v2 [--pca_dim=128] [--normalize]
  python -m run.embed_text --dataset=tfrecords/electro --model=sentence-transformers/all-MiniLM-L6-v2  (cache)

Needs the optional package sentence-transformers and a model that is already on disk (a folder, or a name in the
Hugging Face cache): HF_HUB_OFFLINE=1 is set, nothing is downloaded. Titles come from `<dataset>/item_text.tsv`
(written by run.make_data); items without a title get the missing flag. See docs/datasets.md.
"""

from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", None, "Converted dataset: a name under --data_dir, or a path.")
flags.DEFINE_string("data_dir", "tfrecords", "Where converted datasets live.")
flags.DEFINE_string("model", None, "Local folder of a sentence-transformers model, or a model name in the local "
                    "Hugging Face cache.")
flags.DEFINE_string("modality", "text", "Name of the modality / table to write.")
flags.DEFINE_integer("batch_size", 128, "Encoding batch size.")
flags.DEFINE_integer("pca_dim", 0, "Reduce the vectors to this dimension with PCA (0 = keep).")
flags.DEFINE_boolean("normalize", False, "L2-normalise the embeddings.")
flags.DEFINE_enum("table_dtype", None, ["float32", "float16", "int8"],
                  "Storage dtype (default: that of the dataset's other tables, else float32).")
flags.DEFINE_string("device", None, "Torch device for the encoder (default: its own choice).")


def main(argv):
    del argv
    from mmctr_tf.data.converters.text_embed import TextEmbedError, embed_dataset, load_encoder
    from mmctr_tf.data.datasets import dataset_dir
    from mmctr_tf.data.schema import SchemaError

    if not FLAGS.dataset:
        print("embed_text: --dataset is required", file=sys.stderr)
        return 2
    path = dataset_dir(FLAGS.dataset, FLAGS.data_dir)
    try:
        encoder = load_encoder(FLAGS.model, FLAGS.device)
        manifest = embed_dataset(path, encoder, modality=FLAGS.modality, batch_size=FLAGS.batch_size,
                                 pca_dim=FLAGS.pca_dim, table_dtype=FLAGS.table_dtype, normalize=FLAGS.normalize,
                                 model_name=FLAGS.model)
    except TextEmbedError as e:
        print(f"embed_text: {e}", file=sys.stderr)
        return 2
    except SchemaError as e:
        print(f"embed_text: {e}", file=sys.stderr)
        return 1
    t = manifest["tables"][FLAGS.modality]
    print(f"{path}: table {FLAGS.modality} {t['rows']} x {t['dim']} {t['dtype']}, "
          f"vectors present for {t['present']} items")
    return 0


if __name__ == "__main__":
    app.run(main)
