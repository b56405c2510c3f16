"""Side-by-side benchmark (issue 5): naive dlt `rest_api` (a) vs this pipeline (b) vs DuckDB `read_json` (c).

`python -m bench.run` (what `make bench` calls) starts the sandbox in its own child process, runs each variant in
its own child process against the same sandbox data, measures wall time, CPU seconds and peak RSS per child, and
writes `bench/results.json` plus the table in `docs/performance.md`. See docs/performance.md for the method.
"""
