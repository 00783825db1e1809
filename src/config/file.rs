//! Serde mirror of the YAML file.
