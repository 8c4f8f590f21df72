"""One process per stage on torch.distributed: stages, schedules, the runtime of a rank, the launcher."""
from synthgrad.pipeline.comm import Channel, PipelineFailure
from synthgrad.pipeline.config import PipelineConfig, PipelineRun, Rendezvous, check_pipeline_run
from synthgrad.pipeline.launch import launch_local
from synthgrad.pipeline.runtime import run_rank
from synthgrad.pipeline.schedule import Action, format_plan, lockstep_plan, simulate, unlocked_plan
from synthgrad.pipeline.stage import Stage, StageModules, partition, split_model, stage_cut_model, stage_groups

__all__ = [
    "Action",
    "Channel",
    "PipelineConfig",
    "PipelineFailure",
    "PipelineRun",
    "Rendezvous",
    "Stage",
    "StageModules",
    "check_pipeline_run",
    "format_plan",
    "launch_local",
    "lockstep_plan",
    "partition",
    "run_rank",
    "simulate",
    "split_model",
    "stage_cut_model",
    "stage_groups",
    "unlocked_plan",
]
