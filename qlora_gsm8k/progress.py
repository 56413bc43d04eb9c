"""Progress that reads well where it is shown: a live bar in a terminal, plain lines in a log.

A tqdm bar redraws itself with carriage returns. In a terminal that is one line that moves; written to a file
(`dvc exp run --queue` and `--temp` logs, `dvc repro > log`, CI) every redraw stays, and the log fills with
hundreds of `\\r` frames. When stderr is not a terminal our loops and the Trainer print one line every
`EVERY_PERCENT` instead, and the libraries' own bars (transformers' weight loading and saving, datasets) are off."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm as plain_tqdm
from tqdm.auto import tqdm

EVERY_PERCENT = 10


def interactive() -> bool:
    """Whether bars can redraw in place: stderr, where tqdm writes, is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


class LineProgress(plain_tqdm):
    """tqdm's counting and timing, shown as a plain line each time another `every` percent is done (and once at
    the start): `generate: 30% (30/100 question), 00:12 elapsed, ~00:28 left`. Without a total, one line at the
    end. Accepted wherever a tqdm class is (huggingface_hub's `tqdm_class`, for one)."""

    def __init__(self, *args, every: int = EVERY_PERCENT, **kwargs):
        self._every, self._shown = every, None
        # Every update reaches display(), which decides itself whether a line is due; leave=False: close() must not
        # redraw and end the bar with a newline of its own.
        kwargs.update(mininterval=0, miniters=1, leave=False)
        super().__init__(*args, **kwargs)

    def _count(self, value: float) -> str:
        if self.unit_scale:  # sizes: 1.00GB
            return self.format_sizeof(value, self.unit, self.unit_divisor)
        return f"{value:g} {self.unit}"

    def line(self) -> str:
        info = self.format_dict
        n, total, rate = info["n"], info["total"], info["rate"]
        done = self._count(n)
        if total:
            of = f"{self._count(n)}/{self._count(total)}" if self.unit_scale else f"{n:g}/{self._count(total)}"
            done = f"{100 * n / total:.0f}% ({of})"
        desc = f"{self.desc.rstrip(': ')}: " if self.desc else ""
        left = f", ~{self.format_interval((total - n) / rate)} left" if total and rate and n < total else ""
        postfix = f", {info['postfix']}" if info["postfix"] else ""
        return f"{desc}{done}, {self.format_interval(info['elapsed'])} elapsed{left}{postfix}"

    def _print(self) -> None:
        self.fp.write(self.line() + "\n")
        self.fp.flush()

    def display(self, msg=None, pos=None) -> bool:
        if msg == "":  # close(): a bar would clear itself here; the lines stay, so only an unknown total's count
            if not self.total and self.n:
                self._print()
            return False
        if not self.total:
            return True
        step = min(self.n * 100 // self.total, 100) // self._every
        if step != self._shown:
            self._shown = step
            self._print()
        return True


def progress(iterable=None, **kwargs) -> tqdm:
    """A progress bar in a terminal, progress lines otherwise; takes tqdm's arguments."""
    return (tqdm if interactive() else LineProgress)(iterable, **kwargs)


def quiet_library_bars() -> None:
    """Off when not interactive: the progress bars transformers, datasets and huggingface_hub draw themselves. The
    environment covers libraries not imported yet; those already imported are switched off directly."""
    if interactive():
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()


def use_progress_lines(trainer, desc: str = "train", shown: tuple[str, ...] = ("loss",)) -> None:
    """Outside a terminal, the Trainer reports a line every EVERY_PERCENT of its steps (with the last logged values of
    `shown`) instead of printing every log dict (its PrinterCallback, what it falls back to with disable_tqdm)."""
    if interactive():
        return
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    class ProgressLines(TrainerCallback):
        bar: LineProgress | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = LineProgress(total=state.max_steps, initial=state.global_step, desc=desc, unit="step")

        def on_log(self, args, state, control, logs=None, **kwargs):
            values = [
                f"{key} {float(logs[key]):.4g}" for key in shown if isinstance((logs or {}).get(key), (int, float))
            ]
            if self.bar is not None and values:
                self.bar.set_postfix_str(", ".join(values), refresh=False)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ProgressLines())
