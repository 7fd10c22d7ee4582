"""LLVM intrinsics reached from Numba: the AVX2 byte shuffle of the 4-bit scan, a nearest-centroid tile of fused
multiply-add dot products for k-means in small dimensions, and a cache prefetch.

Numba has no vector types, so these are written as LLVM IR with ``numba.extending.intrinsic``.
The AVX2 kernel is compiled only when the host CPU has AVX2 (``HAS_AVX2``); callers choose between
it and the portable pure-Numba kernel, which gives the same integers.  The dot-product tile uses LLVM's
target-independent ``llvm.fma`` on 8-float vectors, which every target computes exactly (fused, one rounding).
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


# fma_argmin_tile works on TILE_ROWS rows at a time and TILE_LANES centroids at a time: two 8-float
# accumulators a row, 8 vector registers
TILE_ROWS = 4
TILE_LANES = 16


@intrinsic
def fma_argmin_tile(typingctx, x, i, ct, c_norms, dists, best, arg):
    """The nearest centroids of rows x[i:i + TILE_ROWS]: best[r] / arg[r] = the smallest ||c_j||^2 - 2 x.c_j over the
    centroids j, and the first j that has it.

    x: float32 [n, d], ct: float32 [d, k] (the centroids transposed; k a multiple of TILE_LANES), c_norms: float32
    [k], dists: float32 [TILE_ROWS, k] (scratch: the rows' distances), best: float32 [TILE_ROWS], arg: int32
    [TILE_ROWS], all C-contiguous; the caller guarantees i + TILE_ROWS <= n.  Each x.c is a chain
    of fused multiply-adds over the coordinates in order, from zero (s = fma(x[t], c[t], s)), and each distance is
    rounded as ``c_norms[j] - 2 * s`` is in float32.  NaN is never the smallest (a row of NaNs gets NaN and j 0);
    -0.0 and +0.0 are equal (the first of them wins).

    The dot products of a tile of TILE_ROWS rows by TILE_LANES centroids stay in registers (8 accumulators), so no
    product goes through memory before its distance does: a BLAS product of [n, 16] by [16, 256] writes a float for
    every 16 multiply-adds, and the argmin reads it back.  Then each row keeps 16 running winners in registers over
    its distances (still in L1), and the 16 are folded into one.
    """
    arrays = (x, ct, c_norms, dists, best, arg)
    ok = (all(isinstance(a, types.Array) and a.layout == "C" for a in arrays)
          and all(a.dtype == types.float32 for a in arrays[:-1]) and arg.dtype == types.int32
          and [a.ndim for a in arrays] == [2, 2, 1, 2, 1, 1] and isinstance(i, types.Integer))
    if not ok:
        return None
    sig = types.void(x, i, ct, c_norms, dists, best, arg)

    def codegen(context, builder, signature, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        v8, v8i = ir.VectorType(ir.FloatType(), 8), ir.VectorType(i32, 8)
        xa, ca, na, da, ba, aa = (cgutils.create_struct_proxy(signature.args[n])(context, builder, value=args[n])
                                  for n in (0, 2, 3, 4, 5, 6))
        i0 = builder.sext(args[1], i64) if args[1].type.width < 64 else args[1]
        d = cgutils.unpack_tuple(builder, xa.shape, 2)[1]
        k = cgutils.unpack_tuple(builder, ca.shape, 2)[1]
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8, [v8, v8, v8]), "llvm.fma.v8f32")
        zero, two = ir.Constant(v8, [0.0] * 8), ir.Constant(v8, [2.0] * 8)

        def const(v):
            return ir.Constant(i64, v)

        def load_v(ptr, at, kind=v8):
            return builder.load(builder.bitcast(builder.gep(ptr, [at]), ir.PointerType(kind)), align=4)

        def store_v(value, ptr, at):
            builder.store(value, builder.bitcast(builder.gep(ptr, [at]), ir.PointerType(value.type)), align=4)

        def broadcast(value, kind):
            undef = ir.Constant(kind, ir.Undefined)
            return builder.shuffle_vector(builder.insert_element(undef, value, ir.Constant(i32, 0)), undef,
                                          ir.Constant(v8i, [0] * 8))

        def keep(v, j, old_v, old_j, earlier=True):
            """The winners of (v, j) and (old_v, old_j), lane by lane: smaller, or a number after NaN (NaN is never
            the smallest), or (``earlier``) equal at a smaller j.  Without ``earlier``, j only grows, so ties keep."""
            take = builder.or_(builder.fcmp_ordered("<", v, old_v), builder.and_(
                builder.fcmp_unordered("uno", old_v, old_v), builder.fcmp_ordered("ord", v, v)))
            if earlier:
                take = builder.or_(take, builder.and_(builder.fcmp_ordered("==", v, old_v),
                                                      builder.icmp_signed("<", j, old_j)))
            return builder.select(take, v, old_v), builder.select(take, j, old_j)

        # every running value is an alloca in the entry block, which LLVM keeps in a register (mem2reg)
        halves = [(r, h) for r in range(TILE_ROWS) for h in range(2)]
        accs = {rh: cgutils.alloca_once_value(builder, zero) for rh in halves}
        rows = [builder.mul(builder.add(i0, const(r)), d) for r in range(TILE_ROWS)]
        tiles = builder.udiv(k, const(TILE_LANES))
        with cgutils.for_range(builder, tiles) as tile:  # the distances, TILE_LANES centroids at a time
            j0 = builder.mul(tile.index, const(TILE_LANES))
            for rh in halves:
                builder.store(zero, accs[rh])
            with cgutils.for_range(builder, d) as t:
                col = builder.add(builder.mul(t.index, k), j0)
                cv = [load_v(ca.data, builder.add(col, const(8 * h))) for h in range(2)]
                for r in range(TILE_ROWS):
                    xv = broadcast(builder.load(builder.gep(xa.data, [builder.add(rows[r], t.index)])), v8)
                    for h in range(2):
                        builder.store(builder.call(fma, [xv, cv[h], builder.load(accs[r, h])]), accs[r, h])
            for h in range(2):
                at = builder.add(j0, const(8 * h))
                cn = load_v(na.data, at)
                for r in range(TILE_ROWS):
                    dist = builder.fsub(cn, builder.fmul(two, builder.load(accs[r, h])))
                    store_v(dist, da.data, builder.add(builder.mul(const(r), k), at))
        # each row's 16 running winners (j = lane mod 16) over its distances, still in L1: 8 independent chains
        win = {rh: (cgutils.alloca_once(builder, v8), cgutils.alloca_once(builder, v8i)) for rh in halves}
        for r, h in halves:
            builder.store(ir.Constant(v8, [float("nan")] * 8), win[r, h][0])
            builder.store(ir.Constant(v8i, list(range(8 * h, 8 * h + 8))), win[r, h][1])
        with cgutils.for_range(builder, tiles) as tile:
            j0 = builder.mul(tile.index, const(TILE_LANES))
            for h in range(2):
                at = builder.add(j0, const(8 * h))
                lanes = builder.add(broadcast(builder.trunc(at, i32), v8i), ir.Constant(v8i, list(range(8))))
                for r in range(TILE_ROWS):
                    dist = load_v(da.data, builder.add(builder.mul(const(r), k), at))
                    v, j = keep(dist, lanes, builder.load(win[r, h][0]), builder.load(win[r, h][1]), earlier=False)
                    builder.store(v, win[r, h][0])
                    builder.store(j, win[r, h][1])
        for r in range(TILE_ROWS):  # the 16 folded into one: 8 + 8, then lanes [w:2w] against [0:w]
            v, j = keep(*(builder.load(p) for p in win[r, 1] + win[r, 0]))
            for width in (4, 2, 1):
                pick = ir.Constant(v8i, [width + lane if lane < width else lane for lane in range(8)])
                v, j = keep(builder.shuffle_vector(v, v, pick), builder.shuffle_vector(j, j, pick), v, j)
            builder.store(builder.extract_element(v, ir.Constant(i32, 0)), builder.gep(ba.data, [const(r)]))
            builder.store(builder.extract_element(j, ir.Constant(i32, 0)), builder.gep(aa.data, [const(r)]))
        return context.get_dummy_value()

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
