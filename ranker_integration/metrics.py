"""AUC and GAUC of a click model: defined once in feature_gen/evaluation/click_metrics.py (the trainer
selects discriminative heads on them and may not import this package)."""

from feature_gen.evaluation.click_metrics import auc, gauc

__all__ = ["auc", "gauc"]
