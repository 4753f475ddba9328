"""CKKS aggregation benchmark: our defaults vs NVFlare's defaults, side by side.

For each parameter set and each dimension d, with n clients:

* ``encrypt_s``   mean per-client time of :func:`crypto.ckks.encrypt_vector` (ciphertexts)
* ``serialize_s`` mean per-client time of ``EncryptedVector.to_bytes``
* ``upload_s``    their sum: float vector -> bytes on the wire
* ``aggregate_s`` server time to parse, validate and add all n uploads (streaming)
* ``decrypt_s``   key holder time to parse and decrypt the aggregate
* ``bytes_per_param`` upload bytes / d
* ``max_rel_err`` max |decrypted sum - numpy sum| / bound, inputs uniform in [-bound, bound]

Run ``python -m benchmarks.ckks`` (d = 1e5 and 1e6, n = 10; about a minute on 2 cores)
or ``--quick`` (d = 1e4, n = 3). Import and call :func:`run` from ``secure-fl bench``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crypto.ckks import (  # noqa: E402
    DEFAULT_PARAMS,
    NVFLARE_PARAMS,
    Aggregator,
    CkksClient,
    CkksParams,
    KeyHolder,
    PublicContext,
    encrypt_vector,
)
from crypto.prg import Csprng  # noqa: E402
from crypto.signatures import generate_identity, identity_public_bytes  # noqa: E402

PARAM_SETS: dict[str, CkksParams] = {"secure-fl": DEFAULT_PARAMS, "nvflare": NVFLARE_PARAMS}


def _measure(params: CkksParams, d: int, n: int, *, bound: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    entropy = Csprng.from_entropy()
    client_keys = [generate_identity(entropy) for _ in range(n)]
    t0 = time.perf_counter()
    kh = KeyHolder.generate(params, members=[identity_public_bytes(k) for k in client_keys])
    keygen_s = time.perf_counter() - t0
    signed = kh.signed_context()
    pub_bytes = signed.to_bytes()
    clients = [CkksClient(signed, key_holder=kh.identity_public_key, identity_key=k, params=params)
               for k in client_keys]
    client = clients[0].context
    server = PublicContext.from_bytes(signed.context, params)
    agg = Aggregator(server, d, bound=bound, session_id=signed.session_id)
    ref = np.zeros(d)
    enc_s = ser_s = agg_s = 0.0
    upload = 0
    for i in range(n):
        x = rng.uniform(-bound, bound, d)
        ref += x
        t0 = time.perf_counter()
        vec = encrypt_vector(client, x, bound=bound)
        t1 = time.perf_counter()
        blob = vec.to_bytes()
        receipt = clients[i].sign_upload(blob, round=0)  # the client's signed receipt (issue 14)
        t2 = time.perf_counter()
        agg.add(blob, sender=i, receipt=receipt)  # streaming: added on receipt, O(d) server memory
        t3 = time.perf_counter()
        enc_s += t1 - t0
        ser_s += t2 - t1
        agg_s += t3 - t2
        upload = len(blob)
        del vec, blob
    t0 = time.perf_counter()
    res = agg.result()
    agg_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    total = kh.decrypt_aggregate(res)
    dec_s = time.perf_counter() - t0
    return {
        "poly_modulus_degree": params.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
        "scale_bits": params.scale_bits,
        "d": d,
        "n": n,
        "keygen_s": keygen_s,
        "public_context_bytes": len(pub_bytes),
        "encrypt_s": enc_s / n,
        "serialize_s": ser_s / n,
        "upload_s": (enc_s + ser_s) / n,
        "aggregate_s": agg_s,
        "decrypt_s": dec_s,
        "upload_bytes": upload,
        "bytes_per_param": upload / d,
        "aggregate_bytes": len(res.to_bytes()),
        "max_rel_err": float(np.max(np.abs(total - ref)) / bound),
    }


def run(
    d_values: Sequence[int] = (100_000, 1_000_000),
    n: int = 10,
    *,
    param_sets: dict[str, CkksParams] | None = None,
    bound: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure every parameter set at every d with n clients; returns a JSON-able dict."""
    sets = param_sets or PARAM_SETS
    rows = [
        {"params": name, **_measure(p, d, n, bound=bound, seed=seed)}
        for d in d_values
        for name, p in sets.items()
    ]
    return {
        "benchmark": "ckks",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "rows": rows,
    }


def _table(result: dict[str, Any]) -> str:
    cols = [
        ("params", "{}"),
        ("d", "{}"),
        ("n", "{}"),
        ("encrypt_s", "{:.3f}"),
        ("serialize_s", "{:.3f}"),
        ("upload_s", "{:.3f}"),
        ("aggregate_s", "{:.3f}"),
        ("decrypt_s", "{:.3f}"),
        ("bytes_per_param", "{:.2f}"),
        ("max_rel_err", "{:.1e}"),
    ]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        lines.append("| " + " | ".join(f.format(r[c]) for c, f in cols) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="d = 1e4, n = 3 (a few seconds)")
    ap.add_argument("--json", type=Path, help="also write the JSON result here")
    args = ap.parse_args(argv)
    result = run((10_000,), 3) if args.quick else run()
    print(_table(result))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
