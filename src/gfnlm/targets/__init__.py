"""Targets: unnormalized posteriors R(Z), given as the log-reward of every terminated prefix."""

from gfnlm.targets.base import OwnPrompts, Power, Product, Target
from gfnlm.targets.lm_likelihood import LMLikelihood, PromptAnswerLikelihood
from gfnlm.targets.rule import RuleTarget

__all__ = ["LMLikelihood", "OwnPrompts", "PromptAnswerLikelihood", "Power", "Product", "RuleTarget", "Target"]
