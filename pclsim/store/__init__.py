"""The feature store on disk: content-addressed, memory-mapped, written chunk by chunk.

- `entry`: an entry's key, files, checks and handle (`FeatureRef`), `lookup`;
- `writing`: chunks, assembly (`finalise`) and `extract_task`;
- `cache`: the cache folder (`PCLSIM_CACHE_DIR`), `load_or_extract`, `remove_stale_temporaries`;
- `sharing`: one cache shared by several users and sweeps (modes per umask, the folder's group, owners
  of temporary folders, stale ones removed);
- `tables`: candidate tables on disk beside the features (`TableRef`, `TableWriter`, `lookup_table`).

Imports only `pclsim.core`, `pclsim.data` and the base modules (errors, atomic). `pclsim.store.X`
names what `pclsim.store` named before 0.3 (the writing module's public names).
"""

from .writing import (DTYPES, Chunk, FeatureRef, entry_dir, extract_task, feature_bytes, finalise, lookup,
                      open_features, plan_chunks, store_key, write_chunk)

__all__ = ["DTYPES", "FeatureRef", "store_key", "lookup", "plan_chunks", "write_chunk", "finalise",
           "extract_task", "entry_dir", "feature_bytes", "open_features", "Chunk"]
