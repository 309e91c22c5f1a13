"""Pure math on vectors (pooling, centring, post-processing, correlation, geometry, retrieval, neighbours,
analysis): torch and numpy only; imports nothing of actexp but errors."""
