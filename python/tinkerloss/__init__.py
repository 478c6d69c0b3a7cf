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
    """The ISA tier the kernels run ("scalar", "avx2", "avx512")."""
    return ffi.string(lib.tl_isa_name(lib.tl_isa_active())).decode()


__all__ = [
    "logprobs", "logprobs_backward", "forward_backward", "loss", "verify", "dump_call",
    "load_call", "combine_results", "dpo_loss", "distillation_advantages", "mean_nll",
    "kl_estimate", "kl_penalty", "group_advantages", "datums_from_trajectory",
    "datum_from_sample", "Error", "Status", "ForwardBackwardResult", "LossResult",
    "VerifyReport", "Finding", "FindingKind", "Call", "KL", "set_num_threads",
    "get_num_threads", "isa", "__version__",
]
