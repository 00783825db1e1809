//! YAML text -> positioned, env-expanded tree.
