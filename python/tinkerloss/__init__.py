"""tinkerloss: the loss math of the Tinker training API, on the CPU.

numpy arrays and torch tensors are read where they lie (no copies); SDK
objects of either generation (and their dicts) are read by duck typing,
never by importing the SDK; torch is optional (tinkerloss.torch needs it).
Every failure raises tinkerloss.Error. The GIL is released while the
library computes.
"""

from ._batch import ForwardBackwardResult, LossResult, combine_results, forward_backward, loss
from ._dump import Call, dump_call, load_call
from ._lib import Error, Status, ffi, lib
from ._objectives import (KL, datum_from_sample, datums_from_trajectory, distillation_advantages,
                          dpo_loss, group_advantages, kl_estimate, kl_penalty, mean_nll)
from ._ops import logprobs, logprobs_backward
from ._verify import Finding, FindingKind, VerifyReport, verify
from ._watch import CallInfo, FindingsError, WatchReport, Watcher, watch

__version__ = ffi.string(lib.tl_version()).decode()


def set_num_threads(threads: int) -> None:
    """The process's default thread count of the calls (0: OpenMP's)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise Error(Status.ERR_VALUE, "threads", -1,
                    f"threads must be a whole number >= 0, got {threads!r}")
    lib.tl_set_num_threads(threads)


def get_num_threads() -> int:
    """The process's default thread count of the calls."""
    return int(lib.tl_get_num_threads())


def isa() -> str:
    """The ISA tier the kernels run: "scalar", "avx2", "avx512" (x86-64) or
    "neon" (arm64); TL_ISA in the environment picks it at load time."""
    return ffi.string(lib.tl_isa_name(lib.tl_isa_active())).decode()


def _tiers():
    return [value for value, name in sorted(ffi.typeof("tl_isa").elements.items())]


def supported_isas() -> list:
    """The tiers this build and CPU run, slowest first."""
    return [ffi.string(lib.tl_isa_name(t)).decode() for t in _tiers()
            if lib.tl_isa_supported(t)]


def set_isa(name: str) -> None:
    """Run the kernels of tier `name` from now on, in every thread (as
    TL_ISA does at load time): ERR_VALUE for an unknown name,
    ERR_UNSUPPORTED for a tier this build or CPU lacks."""
    tier = ffi.new("tl_isa *")
    if not isinstance(name, str) or lib.tl_isa_parse(name.encode(), tier):
        names = ", ".join(ffi.string(lib.tl_isa_name(t)).decode() for t in _tiers())
        raise Error(Status.ERR_VALUE, "isa", -1, f"isa {name!r} is not a tier ({names})")
    if lib.tl_isa_set(tier[0]):
        raise Error(Status.ERR_UNSUPPORTED, "isa", -1, f"isa {name!r} is not supported here "
                    f"(supported: {', '.join(supported_isas())})")


__all__ = [
    "logprobs", "logprobs_backward", "forward_backward", "loss", "verify", "dump_call",
    "load_call", "watch", "combine_results", "dpo_loss", "distillation_advantages", "mean_nll",
    "kl_estimate", "kl_penalty", "group_advantages", "datums_from_trajectory",
    "datum_from_sample", "Error", "Status", "ForwardBackwardResult", "LossResult",
    "VerifyReport", "Finding", "FindingKind", "Watcher", "WatchReport", "CallInfo",
    "FindingsError", "Call", "KL", "set_num_threads",
    "get_num_threads", "isa", "supported_isas", "set_isa", "__version__",
]
