"""numba, where it is installed: the one way this package compiles its CPU loops.

Each loop compiles on its first call, releases the GIL while it runs (callers run several on
threads), and caches its machine code on disk between processes (beside the source where
that is writable, else in a user cache folder). Without numba, ``AVAILABLE`` is false and
every caller keeps a path written with torch, numpy or Arrow ops.

Two machine instructions numba does not offer are here too, for the loops to call:
``prefetch`` (ask the memory for a row the loop will soon touch) and ``load_word`` (read 8
bytes at any alignment, to compare strings a word at a time).
"""

from __future__ import annotations

from typing import Any

try:
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - the callers then use their fallbacks
    njit = None  # type: ignore[assignment]

AVAILABLE = njit is not None


def compiled(function: Any) -> Any:
    """``function`` compiled lazily (nogil, cached on disk); itself without numba."""
    return njit(nogil=True, cache=True)(function) if njit is not None else function


if AVAILABLE:

    def _item_pointer(context: Any, builder: Any, array_type: Any, array: Any, index: Any) -> Any:
        """A pointer to ``array[index]`` (to the row's first element for a 2-D array)."""
        view = context.make_array(array_type)(context, builder, array)
        zero = context.get_constant(types.intp, 0)
        indices = [index] + [zero] * (array_type.ndim - 1)
        return cgutils.get_item_pointer(
            context, builder, array_type, view, indices, wraparound=False
        )

    @intrinsic
    def prefetch(typingctx, array, row):  # type: ignore[no-untyped-def]  # pragma: no cover
        """Hint the CPU to fetch the start of ``array[row]`` (1-D or 2-D) for writing."""
        signature = types.void(array, row)

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            pointer = _item_pointer(context, builder, sig.args[0], args[0], args[1])
            byte_pointer = ir.IntType(8).as_pointer()
            int32 = ir.IntType(32)
            hint = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.VoidType(), [byte_pointer, int32, int32, int32]),
                "llvm.prefetch",
            )
            # write access, high locality, data cache
            flags = [ir.Constant(int32, 1), ir.Constant(int32, 3), ir.Constant(int32, 1)]
            builder.call(hint, [builder.bitcast(pointer, byte_pointer), *flags])
            return context.get_dummy_value()

        return signature, codegen

    @intrinsic
    def load_word(typingctx, data, index):  # type: ignore[no-untyped-def]  # pragma: no cover
        """The 8 bytes ``data[index:index + 8]`` of a byte array as one uint64."""
        signature = types.uint64(data, index)

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            pointer = _item_pointer(context, builder, sig.args[0], args[0], args[1])
            word = builder.bitcast(pointer, ir.IntType(64).as_pointer())
            return builder.load(word, align=1)

        return signature, codegen
