"""Tools on top of the pipeline: analysis, planning, budgets, phantoms, benchmarks, demo."""
