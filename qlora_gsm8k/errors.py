"""User-facing errors: one clear line, no traceback, non-zero exit.

`stage_main` is the one place a stage's failures are turned into what the user reads:
- UserError (bad params, bad data, a model that cannot be found): `error: <one line>`, exit 2; several at once
  (UserErrors: a first offline run missing every input) get a heading line and then one line each;
- GPU out of memory that no stage turned into a UserError: one line naming the batch settings, exit 2;
- Ctrl-C / SIGTERM: one line saying that the next `dvc repro` runs the stage again (training: resumes from its
  last checkpoint), exit 130 / 143;
- checks registered with `at_stage_end` (params.yaml unchanged since the stage read it) run once it succeeded.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake the user can fix (params, data, model location). Printed as one line."""


class UserErrors(UserError):
    """Independent problems found together: printed one line each under a heading, then the fix for all of them
    on its own lines (a single line of 1,400 characters was unreadable)."""

    def __init__(self, problems: list[str], fix: list[str] | None = None):
        self.problems, self.fix = list(problems), list(fix or [])
        super().__init__(self.text())

    def text(self) -> str:
        lines = [f"{len(self.problems)} problems:"]
        lines += [f"  ({i}) {one_line(p)}" for i, p in enumerate(self.problems, start=1)]
        return "\n".join(lines + self.fix)


def error_text(err: UserError) -> str:
    """What the user reads: one line, or for UserErrors one line per problem."""
    return f"error: {err.text() if isinstance(err, UserErrors) else one_line(err)}"


USER_ERROR_EXIT_CODE = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception, so `finally` blocks (temporary outputs) run before exit."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def one_line(text: str) -> str:
    """Collapse a message to a single line (library messages often span several)."""
    return " ".join(str(text).split())


def eval_oom_message() -> str:
    """Out of GPU memory outside training (merge check, perplexity, generation)."""
    return (
        "out of GPU memory. Lower eval.batch_size (perplexity, merge check) or eval.generation_batch_size "
        "(and eval.max_new_tokens) for generation in params.yaml, e.g. dvc exp run -S eval.batch_size=8 "
        "-S eval.generation_batch_size=32; the model itself must also fit: use a smaller model.name "
        "or a GPU with more memory"
    )


def _is_disk_full(err: BaseException) -> bool:
    """No space left, as the OS says it (OSError ENOSPC) or as a library rewords it (safetensors' SafetensorError)."""
    import errno

    return (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in str(err)


DISK_FULL_MESSAGE = (
    "no space left on device while writing this stage's outputs (its temporary files are removed; nothing was "
    "recorded). Free disk space: `dvc gc -w` drops cache objects no longer used by the workspace, `rm -rf "
    "checkpoints/` old training checkpoints; then run `dvc repro` again"
)


def _is_out_of_memory(err: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(err, torch.OutOfMemoryError)


_STAGE_END_CHECKS: list[Callable[[], None]] = []


def at_stage_end(check: Callable[[], None]) -> None:
    """Run `check` when the stage's main returns; a UserError from it fails the stage like any other."""
    _STAGE_END_CHECKS.append(check)


def stage_main(func: Callable[[], None] | None = None, *, resumes: bool = False):
    """Wrap a stage's main so user errors print one line instead of a traceback. `resumes`: the stage picks up
    where it was interrupted (training's checkpoints), which the interruption message then says."""
    if func is None:
        return functools.partial(stage_main, resumes=resumes)
    again = (
        "run `dvc repro` again (training resumes from its last checkpoint under checkpoints/)"
        if resumes
        else "run `dvc repro` again to run it from the start"
    )

    @functools.wraps(func)
    def wrapper() -> None:
        # SIGTERM (docker stop, a scheduler, kill) unwinds like Ctrl-C: temporary outputs are removed.
        signal.signal(signal.SIGTERM, _raise_terminated)
        # A process started in the background (`nohup … &`) inherits SIGINT ignored; Ctrl-C and `kill -INT`
        # must still stop a stage the way they do in a terminal.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            func()
            for check in _STAGE_END_CHECKS:
                check()
        except UserError as err:
            print(error_text(err), file=sys.stderr)
            sys.exit(USER_ERROR_EXIT_CODE)
        except KeyboardInterrupt as err:
            how = "terminated" if isinstance(err, Terminated) else "interrupted"
            print(f"{how}: the stage did not finish, DVC records none of its outputs; {again}", file=sys.stderr)
            sys.exit(143 if isinstance(err, Terminated) else 130)
        except Exception as err:
            if _is_disk_full(err):
                print(f"error: {DISK_FULL_MESSAGE}", file=sys.stderr)
                sys.exit(USER_ERROR_EXIT_CODE)
            if not _is_out_of_memory(err):
                raise
            print(f"error: {eval_oom_message()}", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT_CODE)

    return wrapper
