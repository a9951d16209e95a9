"""Posteriors users define: inputs, prompt template, action space and reward terms, in YAML or from Python."""

from gfnlm.posterior.task import PosteriorConfig, PosteriorTask
from gfnlm.posterior.terms import KINDS, Term, parse_terms

__all__ = ["KINDS", "PosteriorConfig", "PosteriorTask", "Term", "parse_terms"]
