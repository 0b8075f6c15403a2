"""Where this process stands in a job of many: its torch.distributed rank, and a Slurm
array task as one job of a --num-jobs build.

`sbatch --array=0-7` starts 8 tasks; each one sees SLURM_ARRAY_TASK_COUNT=8 and its
own SLURM_ARRAY_TASK_ID (offset by SLURM_ARRAY_TASK_MIN, spaced by
SLURM_ARRAY_TASK_STEP when the range has them), which become (num_jobs, job_index).
"""

import os

from pipeline.errors import CapgenError


def dist_info():
    """(rank, world size) from torch.distributed when initialised, else (0, 1)."""
    import torch  # not at import time: the shard builder's path never loads torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _env_int(env, name):
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise CapgenError(f"{name}={value!r}: not an integer") from None


def array_job(num_jobs=None, job_index=None, env=None):
    """(num_jobs, job_index): each given value as is, else the Slurm array task's, else 1 and 0."""
    env = os.environ if env is None else env
    task_id = _env_int(env, "SLURM_ARRAY_TASK_ID")
    if task_id is None:
        return (1 if num_jobs is None else num_jobs), (0 if job_index is None else job_index)
    count = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
    if num_jobs is None:
        if count is None:
            raise CapgenError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not: pass --num-jobs")
        num_jobs = count
    if job_index is None:
        first = _env_int(env, "SLURM_ARRAY_TASK_MIN") or 0
        step = _env_int(env, "SLURM_ARRAY_TASK_STEP") or 1
        job_index, rest = divmod(task_id - first, step)
        if rest or not 0 <= job_index < num_jobs:
            raise CapgenError(
                f"SLURM_ARRAY_TASK_ID={task_id}: not task 0..{num_jobs - 1} of an evenly spaced "
                "array (use --array=0-N, or pass --job-index)"
            )
    return num_jobs, job_index
