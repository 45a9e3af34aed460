"""DCN cross layer (Wang et al., ADKDD 2017), used by Diff-MSIN's FDAF module (eq. 16)."""

from __future__ import annotations

import keras
import tensorflow as tf

from mmctr_tf.layers.core import serializable


@serializable
class CrossLayer(keras.layers.Layer):
    """One DCN-v1 cross layer: x_{l+1} = x_0 (x_l^T w) + b + x_l.

    With x_l = x_0 this is Diff-MSIN eq. (16), E_c = E' E'^T w_c + b_c + E': the [D, D] outer product
    x_0 x_l^T is never materialised, since (x_0 x_l^T) w = x_0 (x_l . w) costs O(D). Stack several layers by
    calling them in turn with the same x_0 (`call(x0, xl)`); `call(x0)` uses x_l = x_0.

    Why not `tensorflow_recommenders.layers.dcn.Cross`: TFRS 0.7.7 (the current release) refuses to import under
    Keras 3 (it requires tf-keras), and its `Cross` is the DCN-v2 form x_0 * (W x_l + b) + x_l with a full
    [D, D] (or low-rank) matrix W, not the vector-weight DCN-v1 form the paper writes in eq. (16). This native
    layer implements eq. (16) exactly with public Keras APIs only.

    Args:
      kernel_initializer: initializer of w [D].
      use_bias: whether to add b [D] (eq. 16 has it).
    """

    def __init__(self, kernel_initializer="glorot_uniform", use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.use_bias = bool(use_bias)

    def build(self, x0_shape, xl_shape=None):
        dim = int(x0_shape[-1])
        self.w = self.add_weight(shape=(dim,), initializer=self.kernel_initializer, name="kernel")
        self.b = self.add_weight(shape=(dim,), initializer="zeros", name="bias") if self.use_bias else None

    def call(self, x0, xl=None):
        xl = x0 if xl is None else xl
        out = x0 * tf.reduce_sum(xl * self.w, axis=-1, keepdims=True) + xl  # x0 (xl . w) + xl, [..., D]
        return out + self.b if self.b is not None else out

    def compute_output_shape(self, x0_shape, xl_shape=None):
        return x0_shape

    def get_config(self):
        return {**super().get_config(), "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "use_bias": self.use_bias}
