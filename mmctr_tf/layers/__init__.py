"""Public Keras layers of mmctr_tf: every equation of the papers is one of these (see docs/dmae.md and
docs/diff_msin.md for the equation -> layer maps). All are `keras.layers.Layer` subclasses with `get_config`,
registered for serialization under the `mmctr_tf` package.

    from mmctr_tf.layers import TargetAttention, SimilarityEncoder, SynergyDiffusion
"""

from mmctr_tf.layers.attention import TargetAttention
from mmctr_tf.layers.backbones import DINBackbone, make_backbone
from mmctr_tf.layers.baselines import FMInteraction, GRUBackbone, LinearTerm, MeanPoolingBackbone, SimTier
from mmctr_tf.layers.bst import BSTBackbone, TransformerBlock
from mmctr_tf.layers.core import MLP, Dice, FrozenVectorTable, masked_mean, safe_cosine, sequence_mask
from mmctr_tf.layers.cross import CrossLayer
from mmctr_tf.layers.diff_msin import AdaptiveFusion, MultimodalExperts, SynergyDiffusion, SynergyObjective
from mmctr_tf.layers.dmae import (
    CrossModalInterestAttention,
    InterestDecoder,
    InterestDistribution,
    SimilarityEncoder,
    SlidingWindowAttention,
)
from mmctr_tf.layers.mha import MultiHeadCrossAttention

__all__ = [
    # shared
    "MLP", "Dice", "FrozenVectorTable", "TargetAttention", "masked_mean", "safe_cosine", "sequence_mask",
    # sequence backbones
    "DINBackbone", "BSTBackbone", "TransformerBlock", "MeanPoolingBackbone", "GRUBackbone", "make_backbone",
    # baselines
    "LinearTerm", "FMInteraction", "SimTier", "CrossLayer",
    # DMAE (eq. 1-13)
    "SimilarityEncoder", "SlidingWindowAttention", "CrossModalInterestAttention", "InterestDistribution",
    "InterestDecoder",
    # Diff-MSIN (eq. 2-17)
    "MultimodalExperts", "SynergyDiffusion", "SynergyObjective", "AdaptiveFusion", "MultiHeadCrossAttention",
]
