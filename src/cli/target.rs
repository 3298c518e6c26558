//! `nvmf target` (stub, being implemented).
#[derive(clap::Args)]
pub struct TargetArgs {}
pub fn run(_a: TargetArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
