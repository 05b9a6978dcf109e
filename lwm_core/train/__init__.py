"""Training: the run config, AdamW, the train step, and the resumable loop behind `lwm train`.

    run = load_run_config("configs/cpu-tiny.toml", ["train.steps=50"])
    plan = prepare(run)      # checks everything, compiles nothing
    result = train(plan)     # resumes from run_dir's latest checkpoint
"""

from lwm_core.train.config import RunConfig, load_run_config, to_toml
from lwm_core.train.loop import Result, train
from lwm_core.train.plan import Plan, prepare

__all__ = ["RunConfig", "load_run_config", "to_toml", "Plan", "Result", "prepare", "train"]
