"""The cryptographic core of secure-fl: sans-I/O protocol objects over audited primitives.

Nothing here touches a socket, a clock or numpy's random generator; every module takes
its randomness from :mod:`crypto.prg` and raises from :mod:`crypto.errors` (the root of
secure-fl's exception tree).

* :mod:`crypto.prg`: the CSPRNG (a 32-byte seed expanded with AES-CTR) behind masks,
  DP noise and rounding; fresh OS entropy unless a test pins the seed.
* :mod:`crypto.key_agreement`: X25519 (RFC 7748) and HKDF-SHA256 (RFC 5869) with a
  purpose label per derived key.
* :mod:`crypto.signatures`: Ed25519 (RFC 8032) with a domain-separation prefix.
* :mod:`crypto.aead`: ChaCha20-Poly1305 (RFC 8439) encryption of Shamir shares between
  clients, bound to session, round, sender and receiver by the associated data.
* :mod:`crypto.shamir`: t-out-of-n sharing of 32-byte secrets over GF(2^256 + 297).
* :mod:`crypto.fixedpoint`: real vectors into Z_2^b and back.
* :mod:`crypto.secagg`: SecAgg (Bonawitz et al., CCS 2017) on the SecAgg+ sparse
  neighbour graph (Bell et al., CCS 2020): client and server state machines, messages,
  wire format, and :func:`crypto.secagg.simulate_round` for in-memory rounds.
* :mod:`crypto.ckks`: CKKS additive aggregation (TenSEAL) with a separate key holder.
"""
