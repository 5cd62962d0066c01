"""``.mmfs`` shares (DESIGN.md ".mmfs shares", seed 001 §6.4.1): folders that show a
MiMei where the user wants it, kept in step with an OS directory.

- :mod:`.mmfs` the file format (TOML, strict);
- :mod:`.registry` the table of ``<store>/shares/*.mmfs`` files, resolved against the
  store (what the view's ``shared/`` shows);
- :mod:`.source` and :mod:`.dirsync` a source directory kept in step with cur
  (inotify, the importer's skip rule);
- :mod:`.service` the daemon service tying them together, with scheduled backups;
- :mod:`.cli` ``mimeifs shares`` and ``mimeifs share add|rm``.
"""
