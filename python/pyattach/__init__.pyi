# Type stub for pyattach's public API (the runtime is __init__.py and _executor.py; the native
# part's own stub, _core.pyi, is generated at build time by nanobind's stubgen).
from concurrent.futures import Executor, Future
from typing import Any, Callable, NamedTuple, TypeVar

from typing_extensions import ParamSpec

_P = ParamSpec("_P")
_T = TypeVar("_T")

__all__ = ["ThreadPoolExecutor", "ThreadInfo", "threads", "stats"]
__version__: str

class ThreadPoolExecutor(Executor):
    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
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

def threads() -> list[ThreadInfo]: ...
def stats() -> list[dict[str, Any]]: ...
