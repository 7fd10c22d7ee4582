"""Blocked inverted lists: codes stored in blocks of 32 vectors, transposed within a block.

Every list starts on a block boundary; list l owns blocks ``block_offsets[l]:block_offsets[l + 1]``
and its first ``list_sizes[l]`` slots (slot = block * 32 + lane).  ``list_rows`` [nblocks * 32]
int64 gives each slot's cache row, -1 for the padding at the end of a list's last block.

Two code layouts:

- bytes (nbits 5..8): ``codes`` uint8 [nblocks, M, 32]; ``codes[b, m, j]`` is sub-code m of lane j.
  For one sub-quantizer the 32 codes of a block are contiguous, so the scan gathers 32 table
  entries with independent accumulators (vectorisable) instead of a serial chain of M lookups.
- nibbles (nbits <= 4, "fast-scan"): ``codes`` uint8 [nblocks, P, 32] with P = ceil(M / 2) sub-quantizer
  pairs (an odd M gets a zero pad sub-quantizer).  Byte ``codes[b, p, h * 16 + i]`` holds sub-code
  m = 2p + h of lane i in its low nibble and of lane 16 + i in its high nibble.  One 32-byte row is
  then exactly what an AVX2 byte shuffle needs: low nibbles index lanes 0..15, high nibbles lanes
  16..31, the first 16 bytes look up sub-quantizer 2p and the last 16 sub-quantizer 2p + 1.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..threads import run_split

BLOCK = 32


def packed_width(m: int, nibbles: bool) -> int:
    """Rows of 32 bytes per block: M for byte codes, ceil(M / 2) sub-quantizer pairs for nibbles."""
    return (m + 1) // 2 if nibbles else m


@njit(cache=True)
def block_layout(row_list, nlist):
    """(block_offsets [nlist + 1], list_sizes [nlist], list_rows [nblocks * 32]) for rows assigned to lists.

    Rows keep their order within a list (stable); rows whose list is -1 are left out; padding slots are -1.
    """
    sizes = np.zeros(nlist, np.int64)
    for lst in row_list:
        if lst >= 0:
            sizes[lst] += 1
    block_offsets = np.zeros(nlist + 1, np.int64)
    for lst in range(nlist):
        block_offsets[lst + 1] = block_offsets[lst] + (sizes[lst] + BLOCK - 1) // BLOCK
    list_rows = np.full(block_offsets[nlist] * BLOCK, -1, np.int64)
    fill = block_offsets[:nlist] * BLOCK
    for r in range(row_list.shape[0]):
        lst = row_list[r]
        if lst >= 0:
            list_rows[fill[lst]] = r
            fill[lst] += 1
    return block_offsets, sizes, list_rows


@njit(cache=True)
def slots_of_rows(list_rows, nrows):
    """row_slot [nrows] int64: where each row lives (-1 if nowhere)."""
    row_slot = np.full(nrows, -1, np.int64)
    for s in range(list_rows.shape[0]):
        r = list_rows[s]
        if r >= 0:
            row_slot[r] = s
    return row_slot


@njit(nogil=True, cache=True)
def _pack_blocks(codes_by_row, list_rows, out, nibbles, start, stop):
    """Blocks start <= b < stop of ``out`` from codes_by_row [N, M] (padding slots keep code 0)."""
    M = codes_by_row.shape[1]
    for b in range(start, stop):
        for j in range(BLOCK):
            r = list_rows[b * BLOCK + j]
            if r >= 0:
                for m in range(M):
                    if nibbles:
                        set_nibble(out, b, m, j, codes_by_row[r, m])
                    else:
                        out[b, m, j] = codes_by_row[r, m]


def _pack(codes_by_row, list_rows, nibbles):
    # a block's lanes share bytes in the nibble layout, so the threads take whole blocks; a serial kernel run in
    # pieces compiles in a fraction of a parallel one's time (1.4 s of a first build)
    M = codes_by_row.shape[1]
    nblocks = list_rows.shape[0] // BLOCK
    out = np.zeros((nblocks, packed_width(M, nibbles), BLOCK), np.uint8)
    run_split(lambda bounds: _pack_blocks(codes_by_row, list_rows, out, nibbles, *bounds), nblocks, out.size * 8)
    return out


def pack_bytes(codes_by_row, list_rows):
    """Byte layout uint8 [nblocks, M, 32] from codes_by_row uint8 [N, M] (padding slots get code 0)."""
    return _pack(codes_by_row, list_rows, False)


def pack_nibbles(codes_by_row, list_rows):
    """Nibble layout uint8 [nblocks, ceil(M / 2), 32] from codes_by_row uint8 [N, M] (values < 16)."""
    return _pack(codes_by_row, list_rows, True)


@njit(inline="always")
def set_nibble(codes, b, m, j, value):
    byte = (m & 1) * 16 + (j & 15)
    shift = (j >> 4) * 4
    old = codes[b, m >> 1, byte]
    codes[b, m >> 1, byte] = (old & ~np.uint8(15 << shift)) | np.uint8((value & 15) << shift)


@njit(inline="always")
def get_nibble(codes, b, m, j):
    return (codes[b, m >> 1, (m & 1) * 16 + (j & 15)] >> ((j >> 4) * 4)) & 15


@njit(cache=True)
def write_codes(codes, slots, new_codes, nibbles):
    """codes[slot] = new_codes[i] for each slot (in place); new_codes [n, M].

    Serial: two lanes of a block share the bytes of the nibble layout, so parallel writes would race.
    """
    M = new_codes.shape[1]
    for i in range(slots.shape[0]):
        b = slots[i] // BLOCK
        j = slots[i] % BLOCK
        for m in range(M):
            if nibbles:
                set_nibble(codes, b, m, j, new_codes[i, m])
            else:
                codes[b, m, j] = new_codes[i, m]


@njit(parallel=True, cache=True)
def read_codes(codes, slots, M, nibbles):
    """Unpacked codes uint8 [n, M] of the given slots."""
    out = np.empty((slots.shape[0], M), np.uint8)
    for i in prange(slots.shape[0]):
        b = slots[i] // BLOCK
        j = slots[i] % BLOCK
        for m in range(M):
            out[i, m] = get_nibble(codes, b, m, j) if nibbles else codes[b, m, j]
    return out
