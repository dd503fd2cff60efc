"""Configures DSPy in every worker that imports it: ``PoolConfig(preload=("dspy_setup",))``
(the README's recipe, with DSPy's offline DummyLM instead of a real LM)."""

import os

import dspy
from dspy.utils import DummyLM

dspy.configure(lm=DummyLM([{"answer": f"configured in {os.getpid()}"}] * 50))
