//! nvmf-target (stub)
