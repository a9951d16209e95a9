"""Targets: unnormalized posteriors R(Z), given as the log-reward of every terminated prefix."""

from gfnlm.targets.base import OwnPrompts, Power, Product, Target
from gfnlm.targets.lm_likelihood import LMLikelihood, PromptAnswerLikelihood
from gfnlm.targets.rule import RuleTarget
from gfnlm.targets.text_function import TextFunction
from gfnlm.targets.text_likelihood import TextLikelihood

__all__ = ["LMLikelihood", "OwnPrompts", "Power", "Product", "PromptAnswerLikelihood", "RuleTarget", "Target",
           "TextFunction", "TextLikelihood"]
