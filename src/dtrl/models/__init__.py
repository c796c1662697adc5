"""Networks: the causal transformer and the Decision Transformer built on it."""

from dtrl.models.decision_transformer import DecisionTransformer

__all__ = ["DecisionTransformer"]
