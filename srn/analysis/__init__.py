"""Analyses without a trained detector and measurements of one: the paper's class-imbalance
statistics (:mod:`~srn.analysis.imbalance`) and the inference benchmark (:mod:`~srn.analysis.bench`).
"""
