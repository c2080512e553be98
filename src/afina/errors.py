"""The one exception type users see: printed as a single line, exit code 2."""


class UserError(Exception):
    """Bad input from the user (spec, data, model ref, storage URL). Message says what and how to fix."""


class RunFailed(Exception):
    """The input was fine but the work failed (every trial of a sweep failed): one line, exit code 1."""
