"""``borrow(a)``: array ``a`` inside jitted code without its reference count.

numba counts references to every array it passes to a function that is not inlined: an atomic
increment on entry and a decrement on return, per array argument, plus those of the views it
makes (``rows[i]``).  The settlement kernel's helpers take a dozen arrays each, so these atomic
adds were ~40 % of its time (docs/perf/order-path.md §21).  A borrowed array is the same
array struct with its meminfo (and parent) NULL: numba's reference counting skips a NULL
meminfo, so passing it on costs nothing.  The book reaches the same end its own way (its state
as views made from addresses, `orderbook.fast._st`).

The rules of use: borrow only arrays that the caller keeps alive for the whole call (the
kernel's arguments), never return a borrowed array or store it, and never replace what it views
(an array that may grow is passed and returned owned).  Under NUMBA_DISABLE_JIT it is the identity.
"""

from __future__ import annotations

from typing import Any

import numba

if numba.config.DISABLE_JIT:
    def borrow(a: Any) -> Any:
        return a
else:
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def borrow(typingctx: Any, a: Any) -> Any:
        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            ary = cgutils.create_struct_proxy(sig.return_type)(context, builder, value=args[0])
            ary.meminfo = cgutils.get_null_value(ary.meminfo.type)
            ary.parent = cgutils.get_null_value(ary.parent.type)
            return ary._getvalue()
        return a(a), codegen
