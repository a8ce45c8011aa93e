# Type stub for pyattach's public API (the runtime is __init__.py and _executor.py; the native
# part's own stub, _core.pyi, is generated at build time by nanobind's stubgen).
from concurrent.futures import Executor, Future
from contextlib import AbstractContextManager
from os import PathLike
from typing import Any, Callable, NamedTuple, TypeVar, Union

from typing_extensions import ParamSpec

_P = ParamSpec("_P")
_T = TypeVar("_T")
_Path = Union[str, PathLike[str]]

__all__ = [
    "ThreadPoolExecutor", "ThreadInfo", "threads", "stats",
    "set_metrics", "metrics_enabled", "reset_metrics", "metrics", "pool_metrics", "metrics_text",
    "trace", "Trace", "TraceResult", "start_trace", "trace_running", "flush_trace", "stop_trace",
]
__version__: str

class ThreadPoolExecutor(Executor):
    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        **ctxkwargs: Any,
    ) -> None: ...
    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]: ...
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...

class ThreadInfo(NamedTuple):
    name: str
    ident: int
    native_id: int
    pool: str
    state: str
    scopes: int
    has_thread_state: bool
    made_by_pyattach: bool
    is_caller: bool
    interpreter: int

def threads() -> list[ThreadInfo]: ...
def stats() -> list[dict[str, Any]]: ...

# metrics(): "wait", "attached" and "detached" are dicts of count, total_s, mean_s, p50_s, p90_s,
# p99_s, max_s and buckets (list of (upper bound in seconds, count)).
# "interpreters" is a list of dicts of interpreter, attaches, wait_s and attached_s.
def set_metrics(on: bool) -> None: ...
def metrics_enabled() -> bool: ...
def reset_metrics() -> None: ...
def metrics() -> list[dict[str, Any]]: ...
def pool_metrics() -> list[dict[str, Any]]: ...
def metrics_text() -> str: ...

class TraceResult(NamedTuple):
    ok: bool
    error: str
    events: int
    dropped: int

class Trace:
    path: str
    events: int | None
    dropped: int | None

def trace(path: _Path, events_per_thread: int = 65536) -> AbstractContextManager[Trace]: ...
def start_trace(events_per_thread: int = 65536) -> None: ...
def trace_running() -> bool: ...
def flush_trace(path: _Path) -> TraceResult: ...
def stop_trace(path: _Path) -> TraceResult: ...
