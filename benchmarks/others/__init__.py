"""One module per other DIEN/DIN implementation, each run through that library's own API.

These modules run in the benchmark's separate environment (see ``benchmarks/compare.py``), as
``python -m benchmarks.others.<library> --data DATA.npz --model dien --out RESULT.json``.
"""
