"""The Ray cluster `afina sweep --workers N` runs on: the embedded one the command starts (with its dashboard), or
the one at `--ray ADDRESS` / RAY_ADDRESS, joined with Ray's token authentication. A join Ray refuses, or an
address where no cluster answers, is one line naming the fix, not Ray's retries and traceback."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

from afina import UserError


def load():
    """Ray, or one line saying how to install it (a plain sweep never imports it)."""
    try:
        import ray
    except ImportError:
        raise UserError("--workers places workers with Ray, which is not installed; pip install 'afina[ray]'") from None
    return ray


def connect(ray, address: str | None) -> str | None:
    """Start the embedded cluster ("local": one of its own, never one that happens to run on this machine), or
    join the one at `address`. Returns the line that gives the dashboard's link, if any. A cluster that refuses
    this driver's token, or no cluster at `address`, is one line (Ray's own refusal is a 20-line traceback)."""
    _probe(address)
    with _held_stderr() if address else contextlib.nullcontext():
        try:
            context = ray.init(address=address or "local", log_to_driver=False, logging_level=_ray_logs(), configure_logging=False)
        except (ConnectionError, RuntimeError, ray.exceptions.AuthenticationError) as e:
            why = _refused(address, e) if address else None
            if not why:
                raise
            raise UserError(why) from None
    # Ray turns token authentication on for a cluster it starts, and then its dashboard asks for the token.
    signin = " (sign in with the token `ray get-auth-token` prints)" if os.environ.get("RAY_AUTH_MODE") == "token" else ""
    if context.dashboard_url:
        where = " on the head node" if address and context.dashboard_url.startswith(("127.", "localhost")) else ""
        return f"Ray dashboard: http://{context.dashboard_url}{where}{signin}"
    if not address:
        return "Ray dashboard: not started (it needs ray[default]: pip install 'afina[ray]')"
    return None


@contextlib.contextmanager
def _held_stderr():
    """Ray's C++ client writes each retry of a refused connection to stderr, 20 lines in all: held back while
    joining, dropped when the refusal becomes afina's one line, shown otherwise. (Only for a join: the processes
    of a cluster that ray.init starts would inherit the held file.)"""
    sys.stderr.flush()
    saved, held = os.dup(2), tempfile.TemporaryFile()
    os.dup2(held.fileno(), 2)
    shown = True
    try:
        yield
    except UserError:
        shown = False
        raise
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        held.seek(0)
        if shown:
            os.write(2, held.read())
        held.close()


def _probe(address: str | None) -> None:
    """Nothing listening at HOST:PORT is one line at once: ray.init retries it for 13 minutes."""
    import socket

    host, _, port = (address or "").rpartition(":")
    if not host or "://" in host or not port.isdigit():  # "auto" or a ray:// client address: Ray's to find
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise UserError(
            f"no Ray cluster answers at {address} ({e.strerror or e}): start one there (`ray start --head`), or check --ray / RAY_ADDRESS"
        ) from None


def _refused(address: str, e: BaseException) -> str | None:
    """Why joining `address` failed, with the fix; None for what is not a refusal or an absent cluster. Ray
    nests the token's refusal in the text of its causes."""
    text, first = "", e
    while e is not None:
        text, e = text + f" {type(e).__name__}: {e}", e.__cause__ or e.__context__
    put = "in RAY_AUTH_TOKEN, the file at RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (README: Scaling out)"
    if "no authentication token was found" in text:
        return f"RAY_AUTH_MODE=token but this machine has no Ray token: put the cluster's {put}"
    if "InvalidAuthToken" in text and os.environ.get("RAY_AUTH_MODE") != "token":
        return f"the Ray cluster at {address} asks for its token: export RAY_AUTH_MODE=token and put the cluster's token {put}"
    if "InvalidAuthToken" in text:
        return f"the Ray cluster at {address} refused this machine's token: put the cluster's {put}"
    if isinstance(first, ConnectionError):
        return f"no Ray cluster answers at {address}: start one there (`ray start --head`), or check --ray / RAY_ADDRESS"
    return None


def _ray_logs() -> str:
    """Ray's own log lines (its token notice, its scheduler) only with --verbose."""
    return "INFO" if os.environ.get("AFINA_VERBOSITY") == "verbose" else "ERROR"
