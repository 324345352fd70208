"""FedSVD's server-side re-factorization: the published dense path against fedlora's QR path.

    python benchmarks/svd_refactorization.py [--repeats 5] [--threads 1]

For each shape (out×in, rank r, number of LoRA modules) it builds random non-zero factors
B (out×r) and A (r×in) and times, per round of aggregation:

* ``refactorize_dense``: ``svd(B @ A)`` of the dense out×in product, as the published FedSVD code
  does (O(out·in·min(out, in))), and
* ``refactorize``: QR of B, then an SVD of the r×in matrix ``R·A`` (O((out+in)·r²)).

The QR path is timed over all modules of a round, median of ``--repeats`` rounds. The dense
path takes seconds per module (minutes at 4096), so it is timed module by module on the first
few modules of the shape (``dense_timed`` below) and a round is their median times the module
count ("extrapolated" in the table). Every dense-timed module is also checked: both paths
give the same product ``B_new @ A_new = B @ A`` and the same A up to row signs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fedlora_cli.methods.fedsvd import refactorize, refactorize_dense

SHAPES = [  # label, out, in, rank, modules per round, modules the dense path is timed on
    ("RoBERTa-large q/v", 1024, 1024, 8, 48, 8),
    ("LLaMA-like", 4096, 4096, 8, 4, 1),
]


def timed(fn, factors) -> float:
    start = time.perf_counter()
    for b, a in factors:
        fn(b, a)
    return time.perf_counter() - start


def relative_error(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x.double() - y.double()).norm() / y.double().norm())


def bench_shape(label, out, inp, rank, modules, dense_timed, args) -> dict:
    generator = torch.Generator().manual_seed(0)
    factors = [(torch.randn(out, rank, generator=generator), torch.randn(rank, inp, generator=generator)) for _ in range(modules)]

    timed(refactorize, factors[:1])  # warm up LAPACK
    qr_times = [timed(refactorize, factors) for _ in range(args.repeats)]
    dense_per_module = [timed(refactorize_dense, [pair]) for pair in factors[:dense_timed]]

    worst_product, worst_a = 0.0, 0.0
    for b, a in factors[:dense_timed]:
        b_qr, a_qr = refactorize(b, a)
        b_dense, a_dense = refactorize_dense(b, a)
        signs = torch.sign((a_qr * a_dense).sum(dim=1, keepdim=True))
        worst_product = max(worst_product, relative_error(b_qr @ a_qr, b_dense @ a_dense), relative_error(b_qr @ a_qr, b @ a))
        worst_a = max(worst_a, relative_error(a_qr * signs, a_dense))
    qr_round = statistics.median(qr_times)
    dense_round = statistics.median(dense_per_module) * modules
    return {
        "shape": f"{label}: {out}x{inp}, r={rank}, {modules} modules",
        "dense_s": dense_round,
        "dense_note": f" (extrapolated: median of {dense_timed} module(s) x {modules})",
        "qr_s": qr_round,
        "ratio": dense_round / qr_round,
        "max_rel_err_product": worst_product,
        "max_rel_err_a": worst_a,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the QR path (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float64 factorizations")
    print("| shape | dense svd(B@A) s/round | QR path s/round | ratio | max rel err B@A | max rel err A (up to sign) |")
    print("|---|---|---|---|---|---|")
    for shape in SHAPES:
        r = bench_shape(*shape, args)
        print(
            f"| {r['shape']} | {r['dense_s']:.3f}{r['dense_note']} | {r['qr_s']:.5f} | {r['ratio']:.0f}x "
            f"| {r['max_rel_err_product']:.1e} | {r['max_rel_err_a']:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
