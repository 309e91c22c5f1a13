"""Files on disk: atomic writes, locks, content hashes, checked tensor files, corpus means, vector
stores, their reader, and fits; imports maths, config, errors and progress, never models or above."""
