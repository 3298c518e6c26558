//! nvmf-host (stub)
