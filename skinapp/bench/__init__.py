"""Benchmarks: where the time goes, and proof that no model pass is wasted (see run.py)."""

from skinapp.bench.run import BenchSettings, run_benchmark, to_markdown, write_results

__all__ = ["BenchSettings", "run_benchmark", "to_markdown", "write_results"]
