"""Long-running robustness campaigns against a live mount (``scripts/stress``).

Each module runs one campaign and returns a report; the CI tests call the same code with
bounded sizes, ``scripts/stress`` with large ones:

- :mod:`kho_fs.stress.fuzz`: random payloads to every writable file; each answer must be
  success or the errno the spec prescribes.
- :mod:`kho_fs.stress.concurrency`: parallel readers and writers while activate/kexec
  cycles run; no torn or lost writes.

The stateful model test lives in ``tests/model/test_stateful.py`` (hypothesis), which
``scripts/stress`` runs with a larger example count.
"""
