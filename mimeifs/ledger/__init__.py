"""The ledger: sparse Merkle tree, accounts, transfers, pulses, proofs and credit.

Sources: seed 002 Part II §§III–VIII. Modules, one job each:

- :mod:`.proof`  – proof encoding and the pure verifier
- :mod:`.smt`    – the versioned, path-compressed sparse Merkle tree in LMDB: reads,
  proofs, pulses, pruning; its batch update in steps is :mod:`.smt_batch`, the optional
  second process that shares a large batch :mod:`.smt_helper`
- :mod:`.records` – signed records: organization, application, approval, reward,
  transfer, pulse record
- :mod:`.ledger` – an organization's ledger: accounts, admission, rewards, transfers;
  closing and reading pulses in :mod:`.pulses`; the event format, the chain of pulse
  records and the ledger's errors in :mod:`.chain`
- :mod:`.credit` – letters of credit, IOUs and the per-node credit book
- :mod:`.cli`    – the ``mimeifs ledger …`` and ``mimeifs credit …`` admin commands

Imports only :mod:`mimeifs.ids` and :mod:`mimeifs.engine.db`.
"""
