"""One process per stage on torch.distributed (Jaderberg et al., arXiv 1608.05343, section 2, "update unlock",
across processes): a model cut into stages (``stage_groups``), schedules as printable plans, each rank a task
of the training engine (``run_rank``), and a launcher for the ranks of one machine (``launch_local``)."""
from synthgrad.pipeline.config import SCHEDULES, PipelineConfig, Rendezvous
from synthgrad.pipeline.launch import launch_local
from synthgrad.pipeline.runtime import RankSetup, run_rank
from synthgrad.pipeline.schedule import format_plan, lockstep_plan, unlocked_plan
from synthgrad.pipeline.split import stage_cut_model, stage_groups
from synthgrad.pipeline.task import StageData

__all__ = [
    "SCHEDULES",
    "PipelineConfig",
    "RankSetup",
    "Rendezvous",
    "StageData",
    "format_plan",
    "launch_local",
    "lockstep_plan",
    "run_rank",
    "stage_cut_model",
    "stage_groups",
    "unlocked_plan",
]
