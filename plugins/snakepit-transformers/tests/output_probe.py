"""A target the tests allow, to look at a model output inside the worker."""

from typing import Any


def cache_length(output: Any) -> int:
    """How many positions the output's cache holds (it must be the real cache object)."""
    return int(output.past_key_values.get_seq_length())
