//! Internal entry points for fuzzing and test vectors. Not a stable API.
