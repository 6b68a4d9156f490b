"""Training progress as a hook of the loop (`train(..., on_step=TrainingProgress())`): a bar with the
run's total optimizer steps and an ETA on a terminal, one log line every N seconds elsewhere
(feature_gen.logs.Progress). The loop calls `begin(total_steps, done)` once on rank 0, then the hook
after every step."""

from __future__ import annotations

from feature_gen.logs import Progress


class TrainingProgress:
    def __init__(self, desc: str = "train"):
        self.desc = desc
        self.bar: Progress | None = None
        self.last_loss: float | None = None

    def begin(self, total_steps: int, done: int) -> None:
        self.bar = Progress(total_steps, self.desc, "steps", initial=done)

    def __call__(self, state) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
