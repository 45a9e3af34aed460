"""mmctr_tf: multimodal CTR prediction (DMAE, Diff-MSIN and baselines) in Keras 3 on TensorFlow."""

__version__ = "0.1.0"
