"""Model definitions. Knows nothing of the trainer, the data or the optimizers."""

from .config import ModelConfig, validate_model_config
from .flops import flops_per_token, num_params
from .llama import Llama, build_model

__all__ = ["Llama", "ModelConfig", "build_model", "flops_per_token", "num_params", "validate_model_config"]
