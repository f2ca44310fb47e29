"""Property specifications: the canonical form and the VNN-LIB front ends."""
from genbab.spec.types import Disjunct, Spec, SpecCase, SpecError

__all__ = ["Disjunct", "Spec", "SpecCase", "SpecError"]
