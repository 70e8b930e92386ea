"""The CLI's boundary with its user: one-line errors, exit codes, and help that reads well.

Every command runs inside :func:`boundary`, installed on the whole Typer app at once by
:func:`install` (so commands added later get it too, without touching their bodies). An
exception that reaches it becomes one line on stderr saying what failed and what to do;
``-v`` (or ``SWARMHUB_TRACEBACK=1``) prints the traceback above that line.

Exit codes (the same for every command)::

    0    success
    1    failure (the line on stderr says which and what to do)
    2    usage: a bad option or argument
    130  interrupted (Ctrl-C or SIGTERM; resume data is saved first)
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import re
import ssl
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from swarmhub.errors import SwarmhubError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "LazyConsole",
    "UserError",
    "boundary",
    "describe",
    "err",
    "error",
    "install",
    "print_answer",
    "run",
    "setup_logging",
    "tidy_help",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130



class LazyConsole:
    """A rich ``Console`` made on first use, with the options given here.

    Why: importing ``rich.console`` costs 15-35 ms, and ``swarmhub get`` prints nothing
    through it before its first peer connection (issue 9: connect within 0.5 s of start).
    Rich itself (``Live``, ``Progress``, ``with console:``) needs :attr:`real`.
    """

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    @property
    def real(self) -> Console:
        """The console itself, made (and rich imported) now if not yet."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def print(self, *objects: Any, **options: Any) -> None:
        """:meth:`rich.console.Console.print`."""
        self.real.print(*objects, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def real_console(console: Console | LazyConsole) -> Console:
    """What rich's own classes take: ``console`` itself, made now if lazy."""
    return console.real if isinstance(console, LazyConsole) else console


#: stderr; soft wrap keeps a long message on one line whatever the terminal width.
err = LazyConsole(stderr=True, soft_wrap=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


class UserError(SwarmhubError):
    """A mistake in what the user asked for, found by a command (exit 1 unless ``code``)."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def print_answer(answer: Any, as_json: bool, lines: list[str]) -> None:
    """An API answer for a shell: plain lines (tab-separated columns, for ``cut`` and
    ``awk``) or, with ``--json``, the answer itself."""
    if as_json:
        typer.echo(json.dumps(answer, indent=2, ensure_ascii=False))
        return
    for line in lines:
        typer.echo(line)


def setup_logging(verbose: int, only: str | None = None) -> None:
    """``-v`` for every command: each one a level below WARNING (INFO, then DEBUG).

    ``only``: that logger (and those under it) gets the level, the rest stay at WARNING
    (``lab simulate``: matplotlib's debug output is pages of font look-ups)."""
    level = max(logging.WARNING - 10 * verbose, logging.DEBUG)
    logging.basicConfig(level=logging.WARNING if only else level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if only:
        logging.getLogger(only).setLevel(level)


def error(message: str) -> None:
    """Print ``error: message`` as one line on stderr."""
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}")


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _leaves(sub)
    else:
        yield exc


def root_cause(exc: BaseException) -> BaseException:
    """The exception worth reporting: a TaskGroup's ExceptionGroup is flattened to its
    first leaf that is not a cancellation (the others are usually consequences)."""
    import asyncio

    leaves = list(_leaves(exc))
    for leaf in leaves:
        if not isinstance(leaf, asyncio.CancelledError | KeyboardInterrupt):
            return leaf
    return leaves[0] if leaves else exc


_BIND = re.compile(r"address \('?([^',]*)'?, (\d+)\)")


def _os_error(exc: OSError) -> str:
    name = exc.filename if exc.filename is not None else None
    code = exc.errno
    if code == errno.EADDRINUSE:
        m = _BIND.search(str(exc))
        where = f"{m.group(1)}:{m.group(2)}" if m else "that address"
        return (f"cannot listen on {where}: the port is in use (another swarmhub?); choose "
                "another with --listen HOST:PORT (port 0 picks a free one)")
    if code == errno.EADDRNOTAVAIL:
        return ("cannot listen there: the address is not one of this machine's; use "
                "--listen 0.0.0.0:PORT or a local address")
    if code in (errno.EACCES, errno.EPERM):
        return (f"permission denied: {name}; choose a folder you can write to (-o DIR) or "
                "fix its permissions" if name else
                f"permission denied ({exc.strerror}); ports below 1024 need root")
    if code == errno.EROFS:
        return (f"{name or 'the folder'} is on a read-only file system; choose another "
                "folder (-o DIR)")
    if code == errno.ENOSPC:
        return f"disk full writing {name or 'the download'}; free some space and run again"
    if code == errno.ENOENT:
        parent = os.path.dirname(os.fspath(name)) if name else ""
        if parent and not os.path.isdir(parent):
            return f"the folder {parent} does not exist; create it first or choose another"
        return f"no such file or folder: {name}"
    if code == errno.EEXIST and name:
        return f"{name} already exists and is not a folder; choose another folder (-o DIR)"
    if code == errno.ENOTDIR:
        return f"{name}: a file stands where a folder is needed; choose another path"
    if code == errno.EISDIR:
        return f"{name} is a folder, a file is needed here"
    return f"{exc.strerror or exc}" + (f": {name}" if name else "")


def _http_error(exc: BaseException) -> str | None:
    """Errors of swarmhub's HTTP client (:mod:`swarmhub.discovery.httpget`) in words."""
    if "swarmhub.discovery.httpget" not in sys.modules:
        return None
    from swarmhub.discovery.httpget import ConnectError, HttpError, NoAnswer

    if isinstance(exc, ConnectError):
        why = ("connection refused" if isinstance(exc.os_error, ConnectionRefusedError)
               else exc.os_error.strerror or _first_line(exc.os_error))
        return (f"cannot connect to {exc.host}:{exc.port} ({why}): is the hub running and "
                "the URL right?")
    if isinstance(exc, NoAnswer):
        return ("the server closed the connection without answering: is the URL's scheme "
                "right (http:// vs https://) and the server a swarmhub hub?")
    if isinstance(exc, HttpError):
        return f"HTTP request failed: {_first_line(exc)}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe(exc: BaseException) -> str:
    """One line for a user: what failed and, when we know, what to do about it."""
    exc = root_cause(exc)
    if isinstance(exc, SwarmhubError):
        return " ".join(str(exc).split()) or type(exc).__name__
    client = _http_error(exc)
    if client is not None:
        return client
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {_first_line(exc)}; is the server plain HTTP? use http://"
    if isinstance(exc, OSError):
        return _os_error(exc)
    if isinstance(exc, TimeoutError):
        return "timed out; check the address and try again (or raise --timeout)"
    return (f"unexpected {type(exc).__name__}: {_first_line(exc)} (a bug: run with -v and "
            "report the traceback)")


def _wants_traceback(kwargs: dict[str, Any]) -> bool:
    return bool(kwargs.get("verbose")) or os.environ.get("SWARMHUB_TRACEBACK") == "1"


def boundary(fn: F) -> F:
    """Wrap a command: exceptions become one line and an exit code (see the module doc)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except UserError as exc:
            if _wants_traceback(kwargs):
                traceback.print_exc()
            error(str(exc))
            raise typer.Exit(exc.code) from None
        except Exception as exc:
            if _is_click_exception(exc):
                raise  # usage errors keep their own handling (exit 2)
            if _wants_traceback(kwargs):
                traceback.print_exc()
            error(describe(exc))
            raise typer.Exit(EXIT_FAILURE) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    setattr(wrapper, "__swarmhub_boundary__", True)  # noqa: B010 - marks it as installed
    return wrapper  # type: ignore[return-value]


def _is_click_exception(exc: BaseException) -> bool:
    from typer.exceptions import TyperException

    return isinstance(exc, TyperException)


def install(app: typer.Typer) -> None:
    """Put :func:`boundary` around every command and group callback of ``app``, recursively.

    Done once at import of the CLI; commands registered before that call are covered, so
    new commands need no code of their own for errors.
    """
    for info in app.registered_commands:
        if info.callback is not None and not getattr(info.callback, "__swarmhub_boundary__",
                                                     False):
            info.callback = boundary(info.callback)
    if app.registered_callback is not None:
        cb = app.registered_callback.callback
        if cb is not None and not getattr(cb, "__swarmhub_boundary__", False):
            app.registered_callback.callback = boundary(cb)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            install(group.typer_instance)


def tidy_help(command: Any) -> None:
    """Help shows a flag as a flag: no ``<bool>`` after ``--json``, ``-v`` without ``<int>``,
    and a repeatable option as ``<str>...`` rather than ``<list[str]>``."""
    for param in getattr(command, "params", []):
        if getattr(param, "param_type_name", "") != "option" or param.metavar is not None:
            continue
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""
        elif getattr(param, "multiple", False):
            label = param.display_type(None) if hasattr(param, "display_type") else "<str>"
            inner = re.sub(r"^<list\[(.*)\]>$", r"<\1>", label)
            param.metavar = f"{inner}..."
    original = getattr(command, "get_help_option", None)
    if original is not None:  # --help is made lazily: tidy it when it is made

        def get_help_option(ctx: Any, _original: Any = original) -> Any:
            opt = _original(ctx)
            if opt is not None:
                opt.metavar = ""
            return opt

        command.get_help_option = get_help_option
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub)


def run(app: typer.Typer, args: list[str] | None = None) -> int:
    """Run the CLI and return its exit status; usage errors become one line too (exit 2)."""
    from typer import _click  # typer vendors click: its exception types live here

    from swarmhub import plainparams

    plainparams.install()  # no pydantic for plain values (start-up time)
    command = typer.main.get_command(app)
    tidy_help(command)
    try:
        rv = command.main(args=args, prog_name="swarmhub", standalone_mode=False)
    except _click.exceptions.NoArgsIsHelpError as exc:
        from typer import rich_utils

        rich_utils.rich_format_error(exc)
        return EXIT_USAGE
    except _click.exceptions.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "swarmhub"
        error(f"{exc.format_message()} (see '{where} --help')")
        return EXIT_USAGE
    except _click.exceptions.ClickException as exc:
        error(exc.format_message())
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err.print("[yellow]interrupted[/]")
        return EXIT_INTERRUPTED
    except Exception as exc:  # raised outside a command (e.g. while parsing); rare
        if os.environ.get("SWARMHUB_TRACEBACK") == "1" or "-v" in (args or sys.argv):
            traceback.print_exc()
        error(describe(exc))
        return EXIT_FAILURE
    return rv if isinstance(rv, int) else 0
