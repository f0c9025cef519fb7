"""Moved to ``bench/model_folder.py`` (test and benchmark scaffolding, not part of the library).

Thin re-export kept only until ``bench/predictor_speed.py`` imports ``bench.model_folder``
itself; works from the repository root only (``bench`` is not installed). Delete it then.
"""
from bench.model_folder import DEFAULT_INTENSITY, fit_model_folder, tiny_plans, write_model_folder

__all__ = ["DEFAULT_INTENSITY", "fit_model_folder", "tiny_plans", "write_model_folder"]
