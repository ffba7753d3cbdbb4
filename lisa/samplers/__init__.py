"""Block samplers: which transformer blocks train in a LISA period (pure numpy, explicit RNG).

A sampler draws a sorted tuple of unique block indices from an explicit ``np.random.Generator``
and states the exact probability that each block is in a draw (``inclusion_probabilities()``).
Built-ins live in a name registry that refuses duplicates and that users extend::

    uniform    gamma of N blocks, every subset of size gamma equally likely (pi_l = gamma / N)
    weighted   exactly gamma blocks with target inclusion probabilities pi (systematic design)
    fixed      always the same blocks (an empty set trains only embeddings and head)
    bernoulli  block l on with probability p_l, independently (the draw size varies)
    cyclic     gamma blocks at a time through ascending, descending or reshuffled passes

See docs/samplers.md for the maths and for writing your own sampler.
"""

from __future__ import annotations

from lisa.samplers.base import SUM_TOLERANCE, Sampler, StatefulSampler
from lisa.samplers.cyclic import CYCLIC_ORDERS, CyclicSampler
from lisa.samplers.designs import BernoulliSampler, FixedSampler, UniformSampler, WeightedSampler
from lisa.samplers.probabilities import inclusion_probabilities_from_scores, systematic_sample
from lisa.samplers.registry import available_samplers, make_sampler, register_sampler

__all__ = [
    "CYCLIC_ORDERS",
    "SUM_TOLERANCE",
    "BernoulliSampler",
    "CyclicSampler",
    "FixedSampler",
    "Sampler",
    "StatefulSampler",
    "UniformSampler",
    "WeightedSampler",
    "available_samplers",
    "inclusion_probabilities_from_scores",
    "make_sampler",
    "register_sampler",
    "systematic_sample",
]

