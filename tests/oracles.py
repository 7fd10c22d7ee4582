"""Plain-NumPy oracles for the Numba kernels: slow, obvious, and independent of the fast code."""
import numpy as np


def lloyd(x, init, niter):
    """Textbook k-means from the given initial centroids; empty clusters keep their centroid."""
    c = init.astype(np.float64).copy()
    x64 = x.astype(np.float64)
    for _ in range(niter):
        d = ((x64[:, None, :] - c[None]) ** 2).sum(-1)
        lab = d.argmin(1)
        for j in range(len(c)):
            if (lab == j).any():
                c[j] = x64[lab == j].mean(0)
    d = ((x64[:, None, :] - c[None]) ** 2).sum(-1)
    return c, d.min(1).sum()


def fma_dots_oracle(x, c):
    """x [n, d] . c [k, d] in float32, each dot s = fma(x[t], c[t], s) from s = 0, t ascending.

    A product of float32s is exact in float64, and its sum with s is rounded once to float64, then to float32: twice
    where fma rounds once, which differs only in halfway cases that these tests' values do not meet."""
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    s = np.zeros((len(x), len(c)), np.float32)
    for t in range(x.shape[1]):
        s = (x64[:, t, None] * c64[None, :, t] + s).astype(np.float32)
    return s


def pq_decode(codes, codebooks):
    return np.concatenate([codebooks[m][codes[:, m]] for m in range(codebooks.shape[0])], axis=1)


def pq_distances(x, codebooks):
    """[n, M, ksub]: squared distance of each sub-vector of x [n, M * dsub] to each codeword."""
    n = len(x)
    M, ksub, dsub = codebooks.shape
    out = np.empty((n, M, ksub))
    for m in range(M):  # one sub-space at a time: [n, ksub, dsub] float64 temporaries, not M of them
        sub = x[:, m * dsub:(m + 1) * dsub].astype(np.float64)
        out[:, m] = ((sub[:, None, :] - codebooks[m][None].astype(np.float64)) ** 2).sum(-1)
    return out


def clustered(n, d, centers, seed=0, noise=0.3):
    """Normalised vectors around random centres: a stand-in for real embeddings."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d))
    x = c[rng.integers(centers, size=n)] + noise * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def probe_oracle(index, qr, nprobe):
    """(probes, base) for rotated queries: the lists of largest 2 <q_hat, c> - ||c||^2, ties to the lower list
    (q_hat = q / ||q|| * probe_scale for ip, q for l2); base <q, c> (ip) or -||q - c||^2 (l2)."""
    qr = np.asarray(qr, np.float32)
    dots = qr @ index.coarse.T
    c_norms = np.einsum("ld,ld->l", index.coarse, index.coarse)
    q_norms2 = np.einsum("qd,qd->q", qr, qr)
    l2 = index.params.metric == "l2"
    if l2:
        scale = np.ones(len(qr), np.float32)
    else:
        scale = (np.float32(index.probe_scale) / np.sqrt(q_norms2)).astype(np.float32)
    closeness = np.float32(2) * (scale[:, None] * dots) - c_norms[None]
    lists = np.broadcast_to(np.arange(len(index.coarse)), closeness.shape)
    probes = np.lexsort((lists, -closeness), axis=1)[:, :nprobe]
    d = np.take_along_axis(dots, probes, 1)
    base = -(q_norms2[:, None] - np.float32(2) * d + c_norms[probes]) if l2 else d
    return probes, base.astype(np.float32)


def l2_list_term_oracle(coarse_row, codebooks):
    """||r_mj||^2 + 2 <c_m, r_mj> [M, ksub], the dot summed over the sub-space in order (as the kernel does)."""
    M, ksub, dsub = codebooks.shape
    c = coarse_row.reshape(M, dsub)
    dot = np.zeros((M, ksub), np.float32)
    for t in range(dsub):
        dot = (dot + c[:, t, None] * codebooks[:, :, t]).astype(np.float32)
    return ((codebooks * codebooks).sum(2) + np.float32(2) * dot).astype(np.float32)


def ivfpq_adc_oracle(index, q, k, nprobe):
    """Top-k by ADC over the probed lists, from the public interface only (codes_of, row_list, parameters):
    score = base + sum_m table[m, code_m] summed in m order in float32, where table is the inner-product
    table (ip) or 2 x it minus the list's l2 term (l2); best first, ties to the lower row, -1 pads."""
    qr = index.rotate(q).astype(np.float32)
    probes, base = probe_oracle(index, qr, nprobe)
    lut = index.pq.lut_ip(qr)
    l2 = index.params.metric == "l2"
    out_s = np.full((len(qr), k), -np.inf, np.float32)
    out_r = np.full((len(qr), k), -1, np.int64)
    for i in range(len(qr)):
        scores, rows = [], []
        for p, lst in enumerate(probes[i]):
            members = np.flatnonzero(index.row_list == lst)
            codes = index.codes_of(members)
            table = 2 * lut[i] - l2_list_term_oracle(index.coarse[lst], index.pq.codebooks) if l2 else lut[i]
            s = np.full(len(members), base[i, p], np.float32)
            for m in range(codes.shape[1]):
                s = (s + table[m, codes[:, m]]).astype(np.float32)
            scores.append(s)
            rows.append(members)
        s, r = np.concatenate(scores), np.concatenate(rows)
        order = np.lexsort((r, -s))[:k]
        out_s[i, :len(order)], out_r[i, :len(order)] = s[order], r[order]
    return out_s, out_r


def quantize_table_oracle(tab, qmax):
    """fastscan.quantize_table in NumPy: (qlut uint8 [P, 32], bias, inv_scale), all in float32."""
    tab = np.asarray(tab, np.float32)
    M, ksub = tab.shape
    mins = tab.min(1)
    widest = (tab.max(1) - mins).max()
    scale = np.float32(qmax) / widest if widest > 0 else np.float32(0)
    bias = np.float32(0)
    for v in mins:
        bias = np.float32(bias + v)
    q = np.minimum(((tab - mins[:, None]) * scale + np.float32(0.5)).astype(np.int64), qmax)
    qlut = np.zeros(((M + 1) // 2, 32), np.uint8)
    for m in range(M):
        qlut[m // 2, (m % 2) * 16:(m % 2) * 16 + ksub] = q[m]
    inv = np.float32(1) / scale if scale > 0 else np.float32(0)
    return qlut, np.float32(bias), np.float32(inv)


def nibble_sums_oracle(codes, qlut):
    """Exact integer sums sum_m qlut[m // 2, (m % 2) * 16 + code_m] of codes [n, M] (int64 [n])."""
    M = codes.shape[1]
    return sum(qlut[m // 2, (m % 2) * 16 + codes[:, m].astype(np.int64)].astype(np.int64) for m in range(M))


def fastscan_oracle(index, q, nprobe, n_cand, depth):
    """4-bit search from the public interface: the n_cand best probed codes by quantised score
    (base + bias + sum * inv_scale, float32; ties to the lower row), re-scored with the float tables
    (base + sum_m table[m, code_m] in m order), best ``depth`` first, -1 pads."""
    from qlite.index.fastscan import quantizer_max

    qr = index.rotate(q).astype(np.float32)
    probes, base = probe_oracle(index, qr, nprobe)
    lut = index.pq.lut_ip(qr)
    l2 = index.params.metric == "l2"
    qmax = quantizer_max(index.params.m)
    out_s = np.full((len(qr), depth), -np.inf, np.float32)
    out_r = np.full((len(qr), depth), -1, np.int64)
    for i in range(len(qr)):
        approx, exact, rows = [], [], []
        for p, lst in enumerate(probes[i]):
            members = np.flatnonzero(index.row_list == lst)
            codes = index.codes_of(members)
            table = 2 * lut[i] - l2_list_term_oracle(index.coarse[lst], index.pq.codebooks) if l2 else lut[i]
            qlut, bias, inv = quantize_table_oracle(table, qmax)
            sums = nibble_sums_oracle(codes, qlut).astype(np.float32)
            approx.append(np.float32(base[i, p] + bias) + sums * inv)
            s = np.full(len(members), base[i, p], np.float32)
            for m in range(codes.shape[1]):
                s = (s + table[m, codes[:, m]]).astype(np.float32)
            exact.append(s)
            rows.append(members)
        a, s, r = np.concatenate(approx), np.concatenate(exact), np.concatenate(rows)
        cand = np.lexsort((r, -a))[:n_cand]
        order = cand[np.lexsort((r[cand], -s[cand]))][:depth]
        out_s[i, :len(order)], out_r[i, :len(order)] = s[order], r[order]
    return out_s, out_r
