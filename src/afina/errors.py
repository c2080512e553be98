"""The one exception type users see: printed as a single line, exit code 2."""


class UserError(Exception):
    """Bad input from the user (spec, data, model ref, storage URL). Message says what and how to fix."""
