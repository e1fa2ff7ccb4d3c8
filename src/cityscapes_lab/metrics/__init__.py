"""Metrics: the official Cityscapes scores (a confusion-matrix accumulator and pure formulas) and the study's."""

from .official import ConfusionMatrix, InstanceStats, OfficialScores, official_scores
from .paper import PaperScores, paper_scores, soft_iou

__all__ = ["ConfusionMatrix", "InstanceStats", "OfficialScores", "official_scores", "PaperScores", "paper_scores",
           "soft_iou"]
