"""The environment a trial process gets: an allowlist, never the worker's own.

The worker holds broker credentials (in its environment, its command line or a file it
read); training code is other people's code. A trial starts from nothing and gets only the
variables named here, from the worker's environment, plus what Rung sets for it
(``RUNG_TRIAL_INFO``, ``RUNG_CHANNEL``, ``CUDA_VISIBLE_DEVICES``, ...). docs/security.md
lists them. An operator adds names with ``rung worker --trial-env NAME`` (repeatable);
a name that looks like a secret of Rung's own is refused there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["ALLOWED", "ALLOWED_PREFIXES", "NEVER", "trial_environment"]

# Variables a training process commonly needs: the system's, locale, Python, CUDA/NCCL
# and the usual ML caches. Nothing of Rung's own connection is in here.
ALLOWED: frozenset[str] = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TERM",
        "TZ",
        "TMPDIR",
        "PYTHONPATH",
        "PYTHONHASHSEED",
        "VIRTUAL_ENV",
        "LD_LIBRARY_PATH",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "HF_HOME",
        "TORCH_HOME",
        "XDG_CACHE_HOME",
    }
)
# Whole families: locale (LC_*), NVIDIA/CUDA/NCCL settings, and the caches of common
# libraries.
ALLOWED_PREFIXES: tuple[str, ...] = ("LC_", "CUDA_", "NCCL_", "NVIDIA_", "CUBLAS_", "CUDNN_")
# Never passed on, whatever an operator allows: the worker's own connection and secrets.
NEVER: frozenset[str] = frozenset(
    {
        "RUNG_BROKER_URL",
        "RUNG_BROKER_PASSWORD_FILE",
        "RUNG_BROKER_PASSWORD",
        "RUNG_TEST_AMQP_URL",
        "AMQP_URL",
        "RUNG_TLS_CA",
        "RUNG_TLS_CERT",
        "RUNG_TLS_KEY",
    }
)


def _allowed(name: str, extra: frozenset[str]) -> bool:
    if name in NEVER:
        return False
    return name in ALLOWED or name in extra or name.startswith(ALLOWED_PREFIXES)


def trial_environment(
    base: Mapping[str, str],
    rung_vars: Mapping[str, str],
    *,
    allow: Iterable[str] = (),
) -> dict[str, str]:
    """The trial's environment: the allowlisted names of ``base`` (the worker's
    environment), the operator's extra ``allow`` names, then Rung's own ``rung_vars``
    (which win)."""
    extra = frozenset(allow)
    env = {k: v for k, v in base.items() if _allowed(k, extra)}
    env.update(rung_vars)
    return env
