"""The ledger: sparse Merkle tree, accounts, transfers, pulses, proofs and credit.

Sources: seed 002 Part II §§III–VIII and DESIGN.md "Ledger". Modules, one job each:

- :mod:`.proof`  – proof encoding and the pure verifier
- :mod:`.smt`    – the versioned, path-compressed sparse Merkle tree in LMDB
- :mod:`.records` – signed records: organization, application, approval, reward,
  transfer, pulse record
- :mod:`.ledger` – an organization's ledger: accounts, transfers, pulses, history
- :mod:`.credit` – letters of credit, IOUs and the per-node credit book
- :mod:`.cli`    – the ``mimeifs ledger …`` and ``mimeifs credit …`` admin commands

Imports only :mod:`mimeifs.ids` and :mod:`mimeifs.engine.db`.
"""
