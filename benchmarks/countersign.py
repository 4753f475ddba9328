"""Cost of the witnessed ledger (issue 14): countersigning one aggregation at n = 100.

Per aggregation, with n survivors:

* server: prepare (hash + Ed25519 sign) the entry and commit the line (as without
  countersignatures), plus verify the n countersignatures it receives (the Flower
  ServerApp does);
* each client: check the entry, recompute its hash, sign (:class:`secure_fl.witness.Witness`);
* auditor: verify the n countersignatures of the entry against the roster.

Measured side by side with one SecAgg+ round of the same n in the same run (in-memory
``crypto.secagg.simulate_round``, reduced dimension ``--dim``), so the overhead is a ratio
on this machine. The ledger body has the shape the runner writes (cohort, survivors,
per-client epsilon and staleness for n clients).

    python benchmarks/countersign.py            # n = 100, d = 10_000, 5 repeats
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audits.ledger import (  # noqa: E402
    LEDGER_FILENAME,
    LedgerWriter,
    generate_server_key,
    verify_countersignature,
    verify_ledger,
)
from crypto.secagg import default_neighbors, simulate_round  # noqa: E402
from crypto.secagg.graph import effective_degree  # noqa: E402
from secure_fl.identities import ClientIdentities  # noqa: E402
from secure_fl.witness import Witness, WitnessRequest  # noqa: E402


def _body(version: int, n: int) -> dict[str, Any]:
    ids = list(range(n))
    return {
        "version": version,
        "config_sha256": "ab" * 32,
        "protocol": "secagg",
        "mode": "sync",
        "cohort": ids,
        "survivors": ids,
        "dropped": {"advertise": [], "share_keys": [], "masked_input": [], "unmask": []},
        "excluded": {},
        "staleness": {str(i): 0 for i in ids},
        "staleness_weights": {str(i): 1.0 for i in ids},
        "dp_event": {"type": "distributed_discrete_gaussian", "sigma": 12.5, "num_survivors": n},
        "epsilon_per_client": {str(i): 1.2345 for i in ids},
        "measurements": {"threshold": 51, "neighbors": 40, "session_id": "cd" * 32},
        "transcript_records_sha256": "ef" * 32,
    }


def measure(n: int = 100, dim: int = 10_000, repeats: int = 5) -> dict[str, Any]:
    identities = ClientIdentities.generate(range(n))
    witnesses = {i: Witness(identities.key(i), member=str(i)) for i in range(n)}
    roster = identities.public_keys()
    server_key = generate_server_key()
    prep, clients, server_verify, commit, audit, secagg = [], [], [], [], [], []
    line_bytes = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / LEDGER_FILENAME
        ledger = LedgerWriter.create(path, server_key)
        rng = np.random.default_rng(0)
        k = default_neighbors(n)
        neighbors = None if k >= n - 1 else k
        t = (effective_degree(n, neighbors) + 1) // 2 + 1
        for version in range(1, repeats + 1):
            inputs = [rng.integers(0, 2**32, size=dim, dtype=np.uint64).astype(np.uint32) for _ in range(n)]
            t0 = time.perf_counter()
            simulate_round(inputs, bits=32, threshold=t, neighbors=neighbors, seed=bytes(32))
            secagg.append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            entry = ledger.prepare(_body(version, n))
            prep.append(time.perf_counter() - t0)
            request = WitnessRequest.of(entry)
            t0 = time.perf_counter()
            sigs = {str(i): w.countersign(request, version=version, session_id="cd" * 32) for i, w in witnesses.items()}
            clients.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ok = all(verify_countersignature(entry.entry_hash, s, roster[c]) for c, s in sigs.items())
            server_verify.append(time.perf_counter() - t0)
            if not ok:
                raise SystemExit("a countersignature did not verify")
            t0 = time.perf_counter()
            written = ledger.commit(entry, countersignatures=sigs)
            commit.append(time.perf_counter() - t0)
            line_bytes.append((len(written.to_line()), len(entry.to_line())))
        t0 = time.perf_counter()
        report = verify_ledger(path, server_key.public_key(), client_public_keys=roster, require_witnesses=True)
        audit_total = time.perf_counter() - t0
        t0 = time.perf_counter()
        verify_ledger(path, server_key.public_key())
        audit_plain = time.perf_counter() - t0
        if not report.ok or report.witnessed != repeats:
            raise SystemExit(f"audit failed: {report.first_problem}")
        audit.append((audit_total - audit_plain) / repeats)

    def med(xs: list[float]) -> float:
        return float(statistics.median(xs))

    client_total = med(clients)
    # prepare + commit exist without countersignatures (LedgerWriter.append); the added
    # critical path is one client's countersignature (clients sign in parallel) plus the
    # server verifying the n signatures it receives.
    overhead = client_total / n + med(server_verify)
    return {
        "n": n,
        "dim_secagg_reference": dim,
        "repeats": repeats,
        "server_prepare_s": med(prep),
        "client_countersign_s_each": client_total / n,
        "clients_countersign_s_all": client_total,
        "server_verify_n_s": med(server_verify),
        "server_commit_s": med(commit),
        "audit_verify_per_entry_s": audit[0],
        "critical_path_s": overhead,
        "secagg_round_s": med(secagg),
        "critical_path_over_secagg_round": overhead / med(secagg),
        "ledger_line_bytes_with": line_bytes[0][0],
        "ledger_line_bytes_without": line_bytes[0][1],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--dim", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    res = measure(args.n, args.dim, args.repeats)
    for k, v in res.items():
        print(f"{k:34s} {v:.6g}" if isinstance(v, float) else f"{k:34s} {v}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
