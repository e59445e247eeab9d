//! Cross-file scenarios.
