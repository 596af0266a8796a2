"""The training reporter the commands hand to the Trainer: a rich progress bar on a terminal, plain
progress lines at a steady interval when stderr is a log file (nohup, batch schedulers, CI)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from spkemb.cli.console import busy_notice, console
from spkemb.cli.errors import flag_text
from spkemb.cli.progress import log_interval
from spkemb.train.report import Reporter, StepReport


def _info(r: StepReport) -> str:
    return f"loss {r.loss:.4f}  {r.crops_per_s:.0f} crops/s  lr {r.lr:.2e}"


class CliReporter(Reporter):
    """Progress and messages on stderr; see the module docstring."""

    def __init__(self, interval: float | None = None, flags: Mapping[str, str] | None = None) -> None:
        self.flags = dict(flags or {})  # option field -> the command's flag, for the core's messages
        self.interactive = console.is_terminal
        self.interval = log_interval() if interval is None else interval
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.last_line = 0.0
        self.first_step: int | None = None
        self.t_start = time.monotonic()

    def start(self, description: str, step: int, total: int | None) -> None:
        if self.first_step is None:  # the first start: inputs are checked, training begins
            busy_notice(option=None)
        self.first_step, self.t_start, self.last_line = step, time.monotonic(), time.monotonic()
        if self.interactive:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=console,
            )
            self.task = self.bar.add_task(description, total=total, completed=step, info="")
            self.bar.start()
        else:
            where = f"step {step} of {total}" if total else f"step {step}"
            console.print(f"{description}: starting at {where}", highlight=False, soft_wrap=True)

    def step(self, report: StepReport) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=report.step, info=_info(report))
            return
        now = time.monotonic()
        if now - self.last_line >= self.interval or (report.total is not None and report.step >= report.total):
            self.last_line = now
            console.print(self._line(report, now), highlight=False, soft_wrap=True)

    def _line(self, r: StepReport, now: float) -> str:
        total = f"/{r.total}" if r.total else ""
        line = f"step {r.step}{total}  epoch {r.epoch}  {_info(r)}  elapsed {r.elapsed / 60:.1f} min"
        done = r.step - (self.first_step or 0)
        if r.total and done > 0:
            eta = (r.total - r.step) * (now - self.t_start) / done
            line += f"  eta {eta / 60:.1f} min"
        return line

    def message(self, text: str, warning: bool = False) -> None:
        prefix = "[bold yellow]warning:[/] " if warning else ""
        console.print(prefix + flag_text(text, self.flags), highlight=False, soft_wrap=True)

    def checkpoint(self, path: Path, step: int) -> None:
        if not self.interactive:
            console.print(f"checkpoint {path} (step {step})", highlight=False, soft_wrap=True)

    def end(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
