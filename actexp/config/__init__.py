"""The config interface: the schema, the ranges of its numbers, and one-line messages with did-you-mean;
imports nothing of actexp but errors."""
