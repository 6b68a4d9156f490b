"""A Spark job's progress on the driver, from the status tracker (works with the Spark UI off): tasks
(= partitions) done of the stages seen so far, with rate and ETA, as a bar on a terminal or one log
line every HLLM_PROGRESS_SECONDS (30 s) in a log file (feature_gen.logs.Progress)."""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

from feature_gen.logs import Progress, setup_logging


def stage_counts(tracker, seen: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(tasks done, tasks known) over every stage seen so far; `seen` keeps finished stages' last counts.

    A stage of a job that is no longer active with no task done was skipped (Spark reused its shuffle
    output, as the distributed materialization does): it is dropped, so a finished job reads N/N."""
    active: set[int] = set()
    for job_id in tracker.getActiveJobsIds():
        job = tracker.getJobInfo(job_id)
        active.update(job.stageIds if job else [])
    stage_ids = set(seen) | active  # stages of finished jobs too: their last tasks may have completed since the last poll
    for stage_id in stage_ids:
        info = tracker.getStageInfo(stage_id)
        if info is None or not info.numTasks:
            continue
        if stage_id not in active and info.numCompletedTasks == 0 and info.numActiveTasks == 0:
            seen.pop(stage_id, None)
            continue
        seen[stage_id] = (info.numCompletedTasks, info.numTasks)
    return sum(d for d, _ in seen.values()), sum(t for _, t in seen.values())


@contextmanager
def job_progress(spark, desc: str, poll_s: float = 1.0):
    """Report the job's task progress while the block runs."""
    if not logging.getLogger().handlers:
        setup_logging("INFO")
    tracker = spark.sparkContext.statusTracker()
    bar = Progress(None, desc, "tasks")
    seen: dict[int, tuple[int, int]] = {}
    stop = threading.Event()

    def poll():
        done, total = stage_counts(tracker, seen)
        if total and total != bar.total:
            bar.set_total(total)
        if done > bar.done:
            bar.update(done - bar.done)

    def follow():
        while not stop.wait(poll_s):
            poll()

    thread = threading.Thread(target=follow, daemon=True, name="spark-progress")
    thread.start()
    try:
        yield bar
    finally:
        stop.set()
        thread.join(timeout=5)
        try:
            poll()  # the counts at the end, not at the last tick
        except Exception:  # the context may be stopping: the last tick's counts stand
            pass
        bar.close()
