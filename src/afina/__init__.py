"""afina: iterative fine-tuning sweeps for small LLMs, tracked in MLflow, searched with Optuna."""

__version__ = "0.1.0"


class UserError(Exception):
    """Bad input from the user (spec, data, model ref, storage URL). Message says what and how to fix."""


class RunFailed(Exception):
    """The input was fine but the work failed (every trial of a sweep failed): one line, exit code 1."""


def hint(word: str, choices) -> str:
    """` (did you mean 'x'?)` for the nearest valid choice, or nothing."""
    import difflib

    near = difflib.get_close_matches(word, sorted(map(str, choices)), n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""
