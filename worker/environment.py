"""The environment a trial process gets: an allowlist, never the worker's own.

The worker holds broker credentials (in its environment, its command line or a file it
read); training code is other people's code. A trial starts from nothing and gets only the
variables named here, from the worker's environment, plus what Rung sets for it
(``RUNG_TRIAL_INFO``, ``RUNG_CHANNEL``, ``CUDA_VISIBLE_DEVICES``, ...). docs/security.md
lists them. An operator adds names with ``rung worker --trial-env NAME`` (repeatable);
a name that looks like a secret of Rung's own is refused there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = [
    "ALLOWED",
    "ALLOWED_PREFIXES",
    "NEVER",
    "check_allow_name",
    "is_secret",
    "trial_environment",
]

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
        "OPENBLAS_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "PYTORCH_CUDA_ALLOC_CONF",
        "HF_HOME",
        "TORCH_HOME",
        "XDG_CACHE_HOME",
        "MPLCONFIGDIR",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
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


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Families of Rung's own secrets: never allowed, whatever their exact name.
_SECRET_PREFIXES = ("RUNG_BROKER_", "RUNG_TLS_")


def is_secret(name: str) -> bool:
    """Whether ``name`` is one of Rung's own secrets: never passed to a trial."""
    return name in NEVER or name.startswith(_SECRET_PREFIXES)


def check_allow_name(name: str) -> str:
    """``name`` if an operator may pass it on to trials (``rung worker --trial-env``);
    a ValueError that names the rule otherwise."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"--trial-env {name!r} is not an environment variable name (letters, digits "
            "and _, not starting with a digit)"
        )
    if is_secret(name):
        raise ValueError(
            f"--trial-env {name}: this variable holds the worker's own broker connection or "
            "secrets, which training code must never see; pass what the trial needs under "
            "another name"
        )
    return name


def _allowed(name: str, extra: frozenset[str]) -> bool:
    if is_secret(name):
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
