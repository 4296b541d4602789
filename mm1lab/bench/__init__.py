"""Benchmarks: mm1lab vs transformers' LlavaForConditionalGeneration, with this machine's own limits.

`python -m mm1lab.bench.cli [--json] [--quick]` (or `mm1lab bench`) runs `suite.run_suite`; see docs/benchmarks.md.
"""
