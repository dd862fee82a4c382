"""fastc1k's bench suite: pytest-benchmark suites (`make bench`) and the ceiling report
(`python -m bench.ceiling`). See bench/README.md and bench/METHOD.md."""
