"""Analysis of finished runs: continual metrics (`continual`), the summary table (`summary`), the order
statistics (`statistics`, with the tests in `order_tests` and the sentences in `order_sentences`).

Reads matrices and tables; imports `pclsim.results.tables`, `pclsim.core` and, to measure task difficulty,
`pclsim.study`. A new statistic goes in `statistics.py` / `order_tests.py` (scipy.stats).
"""
