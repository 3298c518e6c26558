//! `nvmf perf` (stub, being implemented).
#[derive(clap::Args)]
pub struct PerfArgs {}
pub fn run(_a: PerfArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
