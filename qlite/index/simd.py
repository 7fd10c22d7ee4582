"""LLVM intrinsics reached from Numba: the AVX2 byte shuffle of the 4-bit scan, and a cache prefetch.

Numba has no vector types, so these are written as LLVM IR with ``numba.extending.intrinsic``.
The AVX2 kernel is compiled only when the host CPU has AVX2 (``HAS_AVX2``); callers choose between
it and the portable pure-Numba kernel, which gives the same integers.
"""
from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def host_has_avx2() -> bool:
    """True if the CPU Numba compiles for supports AVX2: the host's features as llvmlite sees them,
    unless NUMBA_CPU_NAME / NUMBA_CPU_FEATURES make Numba compile for another CPU."""
    from numba.core import config

    if config.CPU_FEATURES is not None:
        return "+avx2" in config.CPU_FEATURES.split(",")
    if config.CPU_NAME is not None and config.CPU_NAME != "host":
        return False  # a named target (e.g. "generic" for portable caches): do not assume AVX2
    try:
        return "+avx2" in llvm.get_host_cpu_features().flatten().split(",")
    except RuntimeError:  # features unknown on this platform
        return False


HAS_AVX2 = host_has_avx2()


def _data_pointer(context, builder, array_type, value):
    return cgutils.create_struct_proxy(array_type)(context, builder, value=value).data


@intrinsic
def nibble_block_sums_avx2(typingctx, codes, b, qlut, out, threshold):
    """out[j] = sum_m qlut[m >> 1, (m & 1) * 16 + code(b, m, j)] for the 32 lanes j of block b (AVX2);
    returns the uint32 mask of lanes whose sum is >= threshold (0 <= threshold <= 65535).

    codes: uint8 [nblocks, P, 32] in the nibble layout (layout.py); qlut: uint8 [P, 32], row p holding
    the 16-entry tables of sub-quantizers 2p and 2p + 1; out: uint16 [32].  Per pair row, one 32-byte
    load of codes, two vpshufb (low nibbles: lanes 0..15, high nibbles: lanes 16..31; the first 16
    bytes of the result are sub-quantizer 2p, the last 16 sub-quantizer 2p + 1).

    Sums are kept in 16-bit words without widening (as faiss does): a shuffle result read as 16 words
    holds lane 2i in the low and lane 2i + 1 in the high byte of word i.  A accumulates whole words
    (wrapping mod 2^16), B the high bytes (word >> 8); then the high-byte lanes sum to B and the
    low-byte lanes to A - (B << 8) mod 2^16, exact while every true sum is < 2^16 (the quantizer
    guarantees 255 x 2P <= 65535 or lowers its range).
    """
    ok = (isinstance(codes, types.Array) and codes.ndim == 3 and codes.layout == "C" and codes.dtype == types.uint8
          and isinstance(qlut, types.Array) and qlut.ndim == 2 and qlut.layout == "C" and qlut.dtype == types.uint8
          and isinstance(out, types.Array) and out.layout == "C" and out.dtype == types.uint16
          and isinstance(b, types.Integer) and isinstance(threshold, types.Integer))
    if not ok:
        return None
    sig = types.uint32(codes, b, qlut, out, threshold)

    def codegen(context, builder, signature, args):
        codes_v, b_v, qlut_v, out_v, thr_v = args
        codes_a = cgutils.create_struct_proxy(signature.args[0])(context, builder, value=codes_v)
        npairs = cgutils.unpack_tuple(builder, codes_a.shape, 3)[1]
        i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
        v32i8, v16i16 = ir.VectorType(i8, 32), ir.VectorType(i16, 16)
        pshufb = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v32i8, [v32i8, v32i8]),
                                                "llvm.x86.avx2.pshuf.b")
        b64 = builder.sext(b_v, i64) if b_v.type.width < 64 else b_v
        block_ptr = builder.gep(codes_a.data, [builder.mul(b64, builder.mul(npairs, ir.Constant(i64, 32)))])
        table_ptr = _data_pointer(context, builder, signature.args[2], qlut_v)
        low4 = ir.Constant(v32i8, [15] * 32)
        four = ir.Constant(v32i8, [4] * 32)
        eight = ir.Constant(v16i16, [8] * 16)
        zero = ir.Constant(v16i16, [0] * 16)
        whole = [cgutils.alloca_once_value(builder, zero) for _ in range(2)]  # A: lanes 0..15, 16..31
        high = [cgutils.alloca_once_value(builder, zero) for _ in range(2)]  # B
        with cgutils.for_range(builder, npairs) as loop:
            offset = builder.mul(loop.index, ir.Constant(i64, 32))
            c = builder.load(builder.bitcast(builder.gep(block_ptr, [offset]), ir.PointerType(v32i8)), align=1)
            t = builder.load(builder.bitcast(builder.gep(table_ptr, [offset]), ir.PointerType(v32i8)), align=1)
            nibbles = (builder.and_(c, low4), builder.and_(builder.lshr(c, four), low4))
            for h in range(2):
                words = builder.bitcast(builder.call(pshufb, [t, nibbles[h]]), v16i16)
                builder.store(builder.add(builder.load(whole[h]), words), whole[h])
                builder.store(builder.add(builder.load(high[h]), builder.lshr(words, eight)), high[h])
        out_ptr = _data_pointer(context, builder, signature.args[3], out_v)
        lo_half = ir.Constant(ir.VectorType(i32, 8), list(range(8)))
        hi_half = ir.Constant(ir.VectorType(i32, 8), list(range(8, 16)))
        interleave = ir.Constant(ir.VectorType(i32, 16), [v for i in range(8) for v in (i, 8 + i)])
        undef16 = ir.Constant(v16i16, ir.Undefined)
        thr = builder.insert_element(undef16, builder.trunc(thr_v, i16), ir.Constant(i32, 0))
        thr = builder.shuffle_vector(thr, undef16, ir.Constant(ir.VectorType(i32, 16), [0] * 16))
        mask = ir.Constant(i32, 0)
        for h in range(2):
            a = builder.load(whole[h])
            odd = builder.load(high[h])
            even = builder.sub(a, builder.shl(odd, eight))
            undef = ir.Constant(v16i16, ir.Undefined)

            def add_halves(v):  # the two 128-bit halves: sub-quantizers 2p and 2p + 1 of the same lanes
                return builder.add(builder.shuffle_vector(v, undef, lo_half), builder.shuffle_vector(v, undef, hi_half))

            even8, odd8 = add_halves(even), add_halves(odd)
            lanes = builder.shuffle_vector(even8, odd8, interleave)  # lane order 2i, 2i + 1
            dst = builder.gep(out_ptr, [ir.Constant(i64, 16 * h)])
            builder.store(lanes, builder.bitcast(dst, ir.PointerType(v16i16)), align=2)
            passing = builder.bitcast(builder.icmp_unsigned(">=", lanes, thr), i16)
            mask = builder.or_(mask, builder.shl(builder.zext(passing, i32), ir.Constant(i32, 16 * h)))
        return mask

    return sig, codegen


@intrinsic
def prefetch(typingctx, array, row, col):
    """Hint the CPU to fetch the cache line holding array[row, col] of a 2-d array (llvm.prefetch:
    read, keep).  Only a hint: it changes no result; targets without a prefetch instruction drop it.
    """
    if (not isinstance(array, types.Array) or array.ndim != 2 or not isinstance(row, types.Integer)
            or not isinstance(col, types.Integer)):
        return None
    sig = types.void(array, row, col)

    def codegen(context, builder, signature, args):
        ary = cgutils.create_struct_proxy(signature.args[0])(context, builder, value=args[0])
        strides = cgutils.unpack_tuple(builder, ary.strides, 2)
        i64 = ir.IntType(64)
        r, c = (builder.sext(v, i64) if v.type.width < 64 else v for v in args[1:3])
        byte_ptr = builder.bitcast(ary.data, ir.PointerType(ir.IntType(8)))
        ptr = builder.gep(byte_ptr, [builder.add(builder.mul(r, strides[0]), builder.mul(c, strides[1]))])
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ir.PointerType(ir.IntType(8)), i32, i32, i32]),
            "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen
