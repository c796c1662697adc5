"""Training: one gradient step (:mod:`.step`), the schedule of a run's chores (:mod:`.schedule`), the
metrics logger (:mod:`.logger`), a run's data, streams and evaluations (:mod:`.run`), and the loops
built on them: one seed (:mod:`.loop`), stacked seeds (:mod:`.stacked`), online fine-tuning
(:mod:`.finetune`)."""

from dtrl.train.loop import train
from dtrl.train.run import TrainResult

__all__ = ["TrainResult", "train"]
