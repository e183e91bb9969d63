"""asyncssh, imported once without cryptography's DSA deprecation warnings.

asyncssh (2.24.1, the newest) names cryptography's DSA key classes in its type aliases when it
is imported, and cryptography 51 deprecated DSA: each of those names printed a
`CryptographyDeprecationWarning` ("DSA is deprecated"), ten lines on every agent or demo start.
gpux makes and accepts no DSA keys (ed25519 host keys, renters' keys as they give them), so
exactly that warning is ignored, only while asyncssh is imported; every other warning stays.

    from agent.sshlib import asyncssh
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    try:
        from cryptography.utils import CryptographyDeprecationWarning as _Deprecation
    except ImportError:  # pragma: no cover - another cryptography: nothing of its to silence
        _Deprecation = DeprecationWarning  # type: ignore[assignment,misc]
    warnings.filterwarnings("ignore", message="DSA is deprecated", category=_Deprecation)
    import asyncssh

__all__ = ["asyncssh"]
