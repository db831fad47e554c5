"""The study plan: what a scenario asks for and how it is computed, in one process, without Ray.

- `scenario`: the scenario file (keys, defaults, validation), `Run`, expansion and grouping of runs;
  `orders`: order designs (all, sample, difficulty orders, explicit lists);
- `strategies`: PatchCoreCL and the baselines (a new strategy: a `Strategy` subclass with `@register`);
- `banks`: memory banks from selections (a new bank kind: `register_bank_kind`);
- `engine`: the plan of jobs (selections, re-reductions, candidate tables) and `simulate`;
- `protocol`: the evaluator and the continual protocol (`run_order`: the T x T matrices);
- `preflight`: checks of the data before a sweep; `maskless`, `gallery`: evaluation options.

Imports `pclsim.core`, `pclsim.store`, `pclsim.data` and the base modules; never Ray.
"""
