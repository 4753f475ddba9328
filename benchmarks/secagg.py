"""SecAgg / SecAgg+ benchmark against the AES-CTR keystream bound and Flower's SecAgg+.

One run measures, side by side on the same machine (the SecAgg+ targets in benchmarks/RESULTS.md):

* ``keystream_GBps``: AES-256-CTR keystream speed of :class:`crypto.prg.Csprng`
  (the PRG every mask is expanded with), on 4*d-byte draws;
* client masking: mean time of one client's MaskedInput step (key agreement for each
  neighbour, ``k + 1`` mask expansions and additions) vs the bound
  ``(k + 1) * d * 4 bytes / keystream speed``;
* server: total time inside ``SecAggServer.receive`` for the round (streaming
  accumulation, Shamir reconstruction, mask regeneration) vs the bound
  ``(|U3| + sum_{u dropped} |N(u) ∩ U3|) * d * 4 / keystream speed`` and vs a plain
  numpy sum of the same number of vectors;
* ``upload_bytes`` per surviving client vs ``d * b / 8``;
* the whole round (all n clients and the server, run sequentially in one process,
  wire encoding included) vs Flower's SecAgg+ doing the same work with its own
  primitives (see :func:`flower_secaggplus_round` for exactly what is timed).

Every time is measured twice, as wall-clock seconds (``*_s``) and as this process's CPU
seconds (``*_cpu_s``, ``*_ratio_cpu``, ``speedup_vs_flower_cpu``; the keystream bound
then uses the keystream speed measured on the same clock). The run is single-threaded,
so on an idle machine the two agree; on a shared one the CPU figures exclude the time
spent waiting for a core, which otherwise lands on whichever side happens to run then.

``python benchmarks/secagg.py [--n 100 --d 1000000 --dropout 0.1 --bits 32]``,
``--quick`` for a small size, ``--no-flower`` to skip the comparison. Import
:func:`run` from ``secure-fl bench``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crypto.prg import Csprng  # noqa: E402
from crypto.secagg import simulate_round  # noqa: E402
from crypto.secagg.client import MASK_BLOCK  # noqa: E402
from crypto.secagg.graph import effective_degree  # noqa: E402
from crypto.secagg.parameters import secagg_parameters  # noqa: E402

QUICK = {"n": 20, "d": 100_000, "dropout": 0.1, "bits": 32}
FULL = {"n": 100, "d": 1_000_000, "dropout": 0.1, "bits": 32}


def keystream_speed(d: int, repeats: int = 7, clock: Any = time.perf_counter) -> float:
    """Bytes per second of the Csprng AES-256-CTR keystream, the best we can measure:
    fresh generators writing into one reused buffer, best of ``repeats``, at two draw
    sizes (4*d bytes, and the cache-sized block that ``apply_masks`` uses)."""
    best = 0.0
    for size in (4 * d, 4 * min(d, MASK_BLOCK)):
        buf = bytearray(size)
        draws = max(1, (4 * d) // size)
        for r in range(repeats):
            gen = Csprng(bytes([r + 1]) * 32)
            t0 = clock()
            for _ in range(draws):
                gen.random_into(buf)
            best = max(best, size * draws / max(clock() - t0, 1e-9))
    return best


def _inputs(n: int, d: int, bits: int) -> list[np.ndarray]:
    # benchmark data only (not a mask path): numpy's generator is fine here
    gen = np.random.default_rng(0)
    return [gen.integers(0, 1 << bits, size=d, dtype=np.uint64).astype(np.uint32) for _ in range(n)]


def flower_secaggplus_round(n: int, d: int, dropped: set[int], num_shares: int, threshold: int) -> dict[str, float]:
    """Flower's SecAgg+ round with its own primitives, as its workflow and mod call them.

    Replicates, in one process and in stage order, the computation of
    ``flwr.client.mod.secure_aggregation.secaggplus_mod`` (``_setup``, ``_share_keys``,
    ``_collect_masked_vectors`` from the quantized vector on, ``_unmask``) and of
    ``flwr.server.workflow.secure_aggregation.secaggplus_workflow`` (forwarding,
    ``bytes_to_ndarray`` + ``parameters_addition`` + ``parameters_mod`` of the masked
    vectors, ``combine_shares``, mask regeneration with ``pseudo_rand_gen``). Not timed:
    Flower's message framing/grid, gRPC/Ray, and quantization of float updates (inputs
    are given already quantized, int64 in [0, 2^22)); both omissions favour Flower.
    Dropped clients go silent after sharing keys (as ``drop="masked_input"`` for us).
    """
    from flwr.common import bytes_to_ndarray, ndarray_to_bytes
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
        decrypt,
        encrypt,
        generate_shared_key,
    )
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.secaggplus_utils import (
        pseudo_rand_gen,
        share_keys_plaintext_concat,
        share_keys_plaintext_separate,
    )
    from flwr.supercore.primitives.asymmetric import (
        bytes_to_private_key,
        bytes_to_public_key,
        generate_key_pairs,
        private_key_to_bytes,
        public_key_to_bytes,
    )

    mod_range = 1 << 32
    gen = np.random.default_rng(1)
    order = list(range(n))
    gen.shuffle(order)
    half = num_shares >> 1
    nbrs = {
        nid: {order[(i + off) % n] for off in range(-half, half + 1)} for i, nid in enumerate(order)
    }
    clock = {"client_s": 0.0, "server_s": 0.0, "masking_s": 0.0, "inputs_s": 0.0,
             "client_cpu_s": 0.0, "server_cpu_s": 0.0}

    def timed(key: str, fn, *args):  # type: ignore[no-untyped-def]
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(*args)
        clock[key] += time.perf_counter() - t0
        clock[key.replace("_s", "_cpu_s")] += time.process_time() - c0
        return out

    # stage 0: setup
    keys: dict[int, tuple[bytes, bytes, bytes, bytes]] = {}

    def setup(nid: int) -> None:
        sk1, pk1 = generate_key_pairs()
        sk2, pk2 = generate_key_pairs()
        keys[nid] = (
            private_key_to_bytes(sk1),
            public_key_to_bytes(pk1),
            private_key_to_bytes(sk2),
            public_key_to_bytes(pk2),
        )

    for nid in range(n):
        timed("client_s", setup, nid)
    # stage 1: share keys
    rd_seeds: dict[int, bytes] = {}
    own_shares: dict[int, dict[int, tuple[bytes, bytes]]] = {nid: {} for nid in range(n)}
    inbox: dict[int, list[tuple[int, bytes]]] = {nid: [] for nid in range(n)}
    ss2: dict[int, dict[int, bytes]] = {nid: {} for nid in range(n)}

    def share(nid: int) -> None:
        rd_seeds[nid] = os.urandom(32)
        peers = sorted(nbrs[nid])
        b_sh = create_shares(rd_seeds[nid], threshold, len(peers))
        s_sh = create_shares(keys[nid][0], threshold, len(peers))
        for idx, peer in enumerate(peers):
            if peer == nid:
                own_shares[nid][nid] = (b_sh[idx], s_sh[idx])
                continue
            k = generate_shared_key(bytes_to_private_key(keys[nid][2]), bytes_to_public_key(keys[peer][3]))
            ss2[nid][peer] = k
            inbox[peer].append((nid, encrypt(k, share_keys_plaintext_concat(nid, peer, b_sh[idx], s_sh[idx]))))

    for nid in range(n):
        timed("client_s", share, nid)
    # stage 2: collect masked vectors
    alive = [nid for nid in range(n) if nid not in dropped]
    masked_sum: list[np.ndarray] | None = None

    def mask(nid: int, x: np.ndarray) -> bytes:
        available = []
        for src, ct in inbox[nid]:
            src2, dst, b_share, s_share = share_keys_plaintext_separate(decrypt(ss2[nid][src], ct))
            if src2 != src or dst != nid:
                raise RuntimeError("share routed to the wrong client")
            own_shares[nid][src] = (b_share, s_share)
            available.append(src)
        t0 = time.perf_counter()
        params = [x]
        dims = [a.shape for a in params]
        params = parameters_addition(params, pseudo_rand_gen(rd_seeds[nid], mod_range, dims))
        for peer in available:
            k = generate_shared_key(bytes_to_private_key(keys[nid][0]), bytes_to_public_key(keys[peer][1]))
            pm = pseudo_rand_gen(k, mod_range, dims)
            params = parameters_addition(params, pm) if nid > peer else parameters_subtraction(params, pm)
        params = parameters_mod(params, mod_range)
        clock["masking_s"] += time.perf_counter() - t0
        return ndarray_to_bytes(params[0])

    for nid in alive:
        t0 = time.perf_counter()
        x = gen.integers(0, 1 << 22, size=d, dtype=np.int64)
        clock["inputs_s"] += time.perf_counter() - t0
        payload = timed("client_s", mask, nid, x)
        del x

        def accumulate(payload: bytes = payload) -> None:
            nonlocal masked_sum
            vec = [bytes_to_ndarray(payload)]
            masked_sum = vec if masked_sum is None else parameters_addition(masked_sum, vec)

        timed("server_s", accumulate)
    if masked_sum is None:
        raise RuntimeError("no masked vectors")
    masked_sum = timed("server_s", parameters_mod, masked_sum, mod_range)
    # stage 3: unmask
    active, dead = set(alive), set(dropped)
    collected: dict[int, list[bytes]] = {nid: [] for nid in range(n)}

    def respond(nid: int) -> None:
        for owner in sorted(nbrs[nid]):
            if owner in own_shares[nid]:
                collected[owner].append(own_shares[nid][owner][0 if owner in active else 1])

    for nid in alive:
        timed("client_s", respond, nid)

    def unmask() -> None:
        nonlocal masked_sum
        assert masked_sum is not None
        for nid, shares in collected.items():
            if nid not in active and nid not in dead:
                continue
            secret = combine_shares(shares)
            shape = get_parameters_shape(masked_sum)
            if nid in active:
                masked_sum = parameters_subtraction(masked_sum, pseudo_rand_gen(secret, mod_range, shape))
            else:
                for peer in nbrs[nid] - {nid}:
                    k = generate_shared_key(bytes_to_private_key(secret), bytes_to_public_key(keys[peer][1]))
                    pm = pseudo_rand_gen(k, mod_range, shape)
                    masked_sum = (
                        parameters_addition(masked_sum, pm) if nid > peer else parameters_subtraction(masked_sum, pm)
                    )
        masked_sum = parameters_mod(masked_sum, mod_range)

    timed("server_s", unmask)
    clock["round_s"] = clock["client_s"] + clock["server_s"]
    clock["round_cpu_s"] = clock["client_cpu_s"] + clock["server_cpu_s"]
    clock["masking_per_client_s"] = clock["masking_s"] / max(1, len(alive))
    clock["upload_masked_vector_bytes"] = float(len(ndarray_to_bytes(np.zeros(d, dtype=np.int64))))
    return clock


class SignatureCounter:
    """Counts the Ed25519 operations of one round by role and purpose (context).

    Wraps ``verify``/``verify_all``/``sign`` as imported by :mod:`crypto.secagg.client`
    and :mod:`crypto.secagg.server` for the duration of a ``with`` block (the wrapper
    adds one count per signature: per call, or per entry of a batch); the real
    functions do the work.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __enter__(self) -> SignatureCounter:
        import crypto.secagg.client as client_mod
        import crypto.secagg.server as server_mod

        self._saved = [(client_mod, "verify", client_mod.verify), (client_mod, "sign", client_mod.sign),
                       (client_mod, "verify_all", client_mod.verify_all),
                       (server_mod, "verify", server_mod.verify)]
        for mod, name, fn in self._saved:
            role = "client" if mod is client_mod else "server"
            setattr(mod, name, self._wrap(fn, f"{role}_{name.removesuffix('_all')}", batch=name.endswith("_all")))
        return self

    def _wrap(self, fn: Any, label: str, *, batch: bool = False) -> Any:
        def counted(*args: Any, context: bytes, **kw: Any) -> Any:
            key = f"{label}_{context.decode().removeprefix('secagg-').replace('-', '_')}"
            self.counts[key] = self.counts.get(key, 0) + (len(args[0]) if batch else 1)
            return fn(*args, context=context, **kw)

        return counted

    def __exit__(self, *exc: object) -> None:
        for mod, name, fn in self._saved:
            setattr(mod, name, fn)


def hardening_costs(
    n: int, degree: int, quorum: int, survivors: int, counts: dict[str, int]
) -> dict[str, float]:
    """Seconds the issue-13 checks add to one round (all clients + server), priced as
    (operations counted in the round) x (time per operation measured now):

    * key validation: each client checks its k neighbours' two keys, the server all 2n;
    * joint graph seed: one SHA-256 over n advertisements per client and at the server;
    * mask-set signatures: each survivor signs its mask set once with its masked input
      and the server verifies it; clients verify such a signature only for a surviving
      partner whose consistency signature (which carries its mask set) was not
      forwarded to them (counted: ``client_verify_mask_set``);
    * cohort quorum: consistency signatures verified by clients (counted) beyond the
      ``t_old = floor((k + 1) / 2) + 1`` of the holder set that the old check needed;
    * robust reconstruction: nothing on the honest path (first t shares, as before).
    """
    from crypto.key_agreement import generate_x25519, public_bytes, validate_x25519_public
    from crypto.secagg import AdvertiseKeys, RoundConfig
    from crypto.signatures import generate_identity, identity_public_bytes, sign, verify

    ident = generate_identity(Csprng(bytes(32)))
    pk = public_bytes(generate_x25519(Csprng(bytes([1]) * 32)))
    msg = bytes(200)
    sig = sign(ident, msg, context=b"bench")

    def per_op(fn: Any, reps: int = 200) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps

    verify_s = per_op(lambda: verify(identity_public_bytes(ident), sig, msg, context=b"bench"))
    sign_s = per_op(lambda: sign(ident, msg, context=b"bench"))
    validate_s = per_op(lambda: validate_x25519_public(pk), 2000)
    ids = tuple(identity_public_bytes(generate_identity(Csprng(bytes([2, i % 256, i // 256]) + bytes(29))))
                for i in range(n))
    cfg = RoundConfig(session_id=bytes(32), round_number=0, bits=32, length=1, threshold=n // 2 + 1,
                      identity_keys=ids, graph_seed=bytes(32))
    ads = [AdvertiseKeys(session_id=bytes(32), round_number=0, sender=i, c_pk=bytes([1]) * 32,
                         s_pk=bytes([2]) * 32, signature=bytes(64)) for i in range(n)]
    seed_s = per_op(lambda: cfg.joint_graph_seed(ads), 50)
    t_old = (degree + 1) // 2 + 1
    client_consistency = counts.get("client_verify_consistency", 0)
    mask_set_ops = (
        counts.get("client_sign_mask_set", 0) * sign_s
        + (counts.get("server_verify_mask_set", 0) + counts.get("client_verify_mask_set", 0)) * verify_s
    )
    client_verifies = sum(v for k, v in counts.items() if k.startswith("client_verify"))
    return {
        "hardening_key_validation_s": (n * 2 * degree + 2 * n) * validate_s,
        "hardening_joint_seed_s": (n + 1) * seed_s,
        "hardening_mask_set_signatures_s": mask_set_ops,
        "hardening_quorum_signatures_s": max(0, client_consistency - survivors * t_old) * verify_s,
        "ed25519_verify_us": verify_s * 1e6,
        "ed25519_verifications_per_client": client_verifies / n,
        "ed25519_verifications_server": sum(v for k, v in counts.items() if k.startswith("server_verify")),
        **{f"count_{k}": float(v) for k, v in sorted(counts.items())},
    }


def _medians(runs: list[tuple[Any, float, float]]) -> tuple[dict[str, float], float, float]:
    """Per-key median of the rounds' timings, and of their wall and CPU seconds."""
    keys = runs[0][0].timings
    return ({key: statistics.median(r.timings[key] for r, _, _ in runs) for key in keys},
            statistics.median(w for _, w, _ in runs), statistics.median(c for _, _, c in runs))


def run(
    n: int = 100, d: int = 1_000_000, dropout: float = 0.1, bits: int = 32, *, flower: bool = True,
    neighbors: int | None = None, max_colluders: int = 1, mask_threads: int | None = None, repeats: int = 3,
) -> dict[str, Any]:
    """Measure one SecAgg+ round (and optionally Flower's); return every figure as a dict.

    The round runs with ``mask_threads`` threads per mask expansion (default: the usable
    cores, as a real client or server would) and with one thread (the ``*_1thread``
    keys), alternately, ``repeats`` times each; every time is the median over the
    repeats. The gain from threads and the single-core figures are both in the same run.
    """
    from crypto.parallel import set_threads
    from crypto.parallel import threads as default_threads

    threads = default_threads() if mask_threads is None else mask_threads
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    params = secagg_parameters(n, max_colluders=max_colluders, neighbors=neighbors)
    k = params.neighbors
    degree = effective_degree(n, k)
    holders = degree + 1
    t = params.threshold
    n_drop = round(dropout * n)
    dropped = set(range(0, n, max(1, n // n_drop))[:n_drop]) if n_drop else set()
    drop = dict.fromkeys(dropped, "masked_input")
    xs = _inputs(n, d, bits)
    speed = keystream_speed(d)
    speed_cpu = keystream_speed(d, clock=time.process_time)

    # numpy reference: plaintext sum of the same number of vectors
    survivors_n = n - len(dropped)
    acc = np.zeros(d, dtype=np.uint32)
    t0 = time.perf_counter()
    for i in range(survivors_n):
        np.add(acc, xs[i], out=acc)
    numpy_sum_s = time.perf_counter() - t0

    seed = 12345
    before = default_threads()
    singles: list[tuple[Any, float, float]] = []
    threaded: list[tuple[Any, float, float]] = []
    counter = SignatureCounter()

    def one_round(xs: list[np.ndarray], counted: bool) -> tuple[Any, float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        with counter if counted else contextlib.nullcontext():
            r = simulate_round(xs, bits=bits, threshold=t, neighbors=k, drop=drop, seed=seed,
                               max_colluders=max_colluders)
        return r, time.perf_counter() - t0, time.process_time() - c0

    try:
        for rep in range(repeats):  # alternate, so drifting load hits both alike
            set_threads(1)
            singles.append(one_round(xs, False))
            set_threads(threads)
            threaded.append(one_round(xs, rep == 0))
    finally:
        set_threads(before)
    if any(not np.array_equal(r.total, threaded[0][0].total) for r, _, _ in singles + threaded):
        raise RuntimeError("the one-thread rounds and the threaded rounds disagree")
    res, _, _ = threaded[0]
    times, round_s, round_cpu_s = _medians(threaded)
    one_times, one_round_s, one_round_cpu_s = _medians(singles)
    expect = np.zeros(d, dtype=np.uint64)
    for i in res.survivors:
        expect += xs[i]
    correct = bool(np.array_equal(res.total.astype(np.uint64), expect % (1 << bits)))

    surv = set(res.survivors)
    pair_masks = sum(len(res.mask_sets.get(u, frozenset()) & surv) for u in dropped)
    server_masks = len(surv) + pair_masks
    server_bound_s = server_masks * 4 * d / speed
    maskers = len(surv)
    client_mask_s = times["client_masked_input_s"] / maskers
    client_bound_s = (degree + 1) * 4 * d / speed
    one_client_s = one_times["client_masked_input_s"] / maskers
    upload = statistics.mean(res.upload_bytes[i] for i in res.survivors)
    out: dict[str, Any] = {
        "n": n,
        "d": d,
        "bits": bits,
        "dropout": dropout,
        "neighbors": degree,
        "threshold": t,
        "survivors": len(surv),
        "correct": correct,
        "mask_threads": threads,
        "repeats": repeats,
        "keystream_GBps": speed / 1e9,
        "client_masking_s": client_mask_s,
        "client_bound_s": client_bound_s,
        "client_ratio": client_mask_s / client_bound_s,
        "server_s": times["server_s"],
        "server_masks": server_masks,
        "server_bound_s": server_bound_s,
        "server_ratio": times["server_s"] / server_bound_s,
        "numpy_sum_s": numpy_sum_s,
        "server_vs_numpy_sum": times["server_s"] / numpy_sum_s,
        "keystream_cpu_GBps": speed_cpu / 1e9,
        "client_masking_cpu_s": times["client_masked_input_cpu_s"] / maskers,
        "client_ratio_cpu": times["client_masked_input_cpu_s"] / maskers / ((degree + 1) * 4 * d / speed_cpu),
        "server_cpu_s": times["server_cpu_s"],
        "server_ratio_cpu": times["server_cpu_s"] / (server_masks * 4 * d / speed_cpu),
        "round_cpu_s": round_cpu_s,
        "wire_s": times["wire_s"],
        "clients_total_s": times["clients_s"],
        "round_s": round_s,
        "client_masking_s_1thread": one_client_s,
        "client_ratio_1thread": one_client_s / client_bound_s,
        "server_s_1thread": one_times["server_s"],
        "server_ratio_1thread": one_times["server_s"] / server_bound_s,
        "round_s_1thread": one_round_s,
        "round_cpu_s_1thread": one_round_cpu_s,
        "upload_bytes_per_client": upload,
        "upload_floor_bytes": d * bits / 8,
        "upload_overhead_bytes": upload - d * bits / 8,
        "download_bytes_per_client": statistics.mean(res.download_bytes[i] for i in res.survivors),
        "max_colluders": max_colluders,
        "quorum": params.quorum,
        **hardening_costs(n, degree, params.quorum, len(surv), counter.counts),
    }
    del xs, res, singles, threaded
    if flower:
        fl = flower_secaggplus_round(n, d, dropped, num_shares=holders, threshold=t)
        out.update(
            {
                "flower_round_s": fl["round_s"],
                "flower_client_s": fl["client_s"],
                "flower_server_s": fl["server_s"],
                "flower_masking_per_client_s": fl["masking_per_client_s"],
                "flower_upload_masked_vector_bytes": fl["upload_masked_vector_bytes"],
                "speedup_vs_flower": fl["round_s"] / round_s,
                "flower_round_cpu_s": fl["round_cpu_s"],
                "speedup_vs_flower_cpu": fl["round_cpu_s"] / round_cpu_s,
                "speedup_vs_flower_1thread": fl["round_s"] / one_round_s,
            }
        )
    out["machine"] = f"{platform.machine()} {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=FULL["n"])
    p.add_argument("--d", type=int, default=FULL["d"])
    p.add_argument("--dropout", type=float, default=FULL["dropout"])
    p.add_argument("--bits", type=int, default=FULL["bits"])
    p.add_argument("--neighbors", type=int, default=None)
    p.add_argument("--max-colluders", type=int, default=1)
    p.add_argument("--quick", action="store_true", help=f"small size {QUICK}")
    p.add_argument("--no-flower", action="store_true")
    p.add_argument("--mask-threads", type=int, default=None, help="threads per mask expansion (default: usable cores)")
    p.add_argument("--repeat", type=int, default=3, help="rounds per thread setting; times are medians")
    a = p.parse_args(argv)
    size = dict(QUICK) if a.quick else {"n": a.n, "d": a.d, "dropout": a.dropout, "bits": a.bits}
    res = run(**size, flower=not a.no_flower, neighbors=a.neighbors, max_colluders=a.max_colluders,
              mask_threads=a.mask_threads, repeats=a.repeat)  # type: ignore[arg-type]
    width = max(len(k) for k in res)
    for key, val in res.items():
        print(f"{key:<{width}}  {val:.4g}" if isinstance(val, float) else f"{key:<{width}}  {val}")
    print(json.dumps(res))
    return 0 if res["correct"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
