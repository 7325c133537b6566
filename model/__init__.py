"""DRoRAE core: frozen ViT encoder, depth-routed fusion, ViT decoder, training phases, metrics.

Knows nothing of Ray, Optuna or MLflow.
"""

from .decoder import DECODER_PRESETS, DecoderConfig, ViTDecoder
from .drorae import DRoRAE, DRoRAEConfig
from .encoder import ENCODER_PRESETS, EncoderConfig, FrozenEncoder, ensure_encoder_weights, pretrain_tiny_encoder
from .errors import AssetError, ConfigError, UserError
from .features import FeatureSet
from .fusion import DepthRoutedFusion, FusionConfig, energy_aggregate, fusion_param_count
from .losses import LossConfig, ReconstructionLoss
from .train import PhaseConfig, finetune_decoder, run_phase, train_decoder, train_fusion

__all__ = [
    "AssetError", "ConfigError", "DECODER_PRESETS", "DRoRAE", "DRoRAEConfig", "DecoderConfig",
    "DepthRoutedFusion", "ENCODER_PRESETS", "EncoderConfig", "FeatureSet", "FrozenEncoder",
    "FusionConfig", "LossConfig", "PhaseConfig", "ReconstructionLoss", "UserError", "ViTDecoder",
    "energy_aggregate", "ensure_encoder_weights", "finetune_decoder", "fusion_param_count", "pretrain_tiny_encoder",
    "run_phase", "train_decoder", "train_fusion",
]
