"""The backfill benchmark (benchmarks/README.md): the seed's row-by-row path, the COPY floor, the
posting stage and the end-to-end backfill, measured in one run on one PostgreSQL server and
compared by ratio. Run it from the repository's root: `python -m benchmarks --help`.

One module per measurement (row_by_row, copy_floor, posting_stage, end_to_end, resume, memory),
what they share in `common` and `dagster_run`, the closing table in `summary`, the options in
`cli`."""
