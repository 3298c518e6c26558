//! nvmf-proto (stub)
