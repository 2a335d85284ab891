"""Evaluation of the engine on real clips against truth computed from the pixels, independently of the engine."""
