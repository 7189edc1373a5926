"""What gets logged and written, and when."""

from mglightning.callbacks.evaluation import TargetEvaluation
from mglightning.callbacks.progress import RoundProgress
from mglightning.callbacks.results import log_task_results

__all__ = ["RoundProgress", "TargetEvaluation", "log_task_results"]
