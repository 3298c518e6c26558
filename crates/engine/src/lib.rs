//! nvmf-engine (stub)
