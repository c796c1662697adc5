"""Networks: the causal transformer and the Decision Transformer built on it, and the MLP BC baseline."""

from torch import nn

from dtrl.config import ModelConfig
from dtrl.models.decision_transformer import DecisionTransformer
from dtrl.models.mlp_bc import MLPBehaviourCloning


def build_model(config: ModelConfig) -> nn.Module:
    """The network ``config.kind`` names: the Decision Transformer or the MLP BC baseline."""
    return MLPBehaviourCloning(config) if config.kind == "mlp" else DecisionTransformer(config)


__all__ = ["DecisionTransformer", "MLPBehaviourCloning", "build_model"]
