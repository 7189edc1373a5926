"""What gets logged and written, and when."""

from mglightning.callbacks.evaluation import TargetEvaluation
from mglightning.callbacks.progress import RoundProgress
from mglightning.callbacks.results import TaskResultsWriter

__all__ = ["RoundProgress", "TargetEvaluation", "TaskResultsWriter"]
