"""Training a Llama at laptop scale: LLaMA's recipe, small enough to read in one sitting.

:mod:`.corpus` (Shakespeare's plays, split by play), :mod:`.dataset` (token files and the batches a step
reads), :mod:`.train` (AdamW, the learning-rate schedule, clipping, the loop and the data source it reads,
evaluation), :mod:`.checkpoint` (training checkpoints that a crash cannot corrupt, exact resumption, the
run folder),
:mod:`.signals` (Ctrl-C and SIGTERM stop a run after a step, with a checkpoint),
:mod:`.distributed` (several processes with ``torchrun``: data parallelism, or FSDP's sharding),
:mod:`.sharded_checkpoint` (an FSDP run's checkpoints, each process writing its shards) and :mod:`.recipes`
(named runs: data, model, hyper-parameters).
"""

from .corpus import shakespeare
from .checkpoint import RunFolder
from .train import TextWindows, TrainConfig, TrainingData, train

__all__ = ["RunFolder", "TextWindows", "TrainConfig", "TrainingData", "shakespeare", "train"]
