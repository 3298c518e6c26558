//! `nvmf discover|identify|read|write` (stubs, being implemented).
#[derive(clap::Args)]
pub struct DiscoverArgs {}
#[derive(clap::Args)]
pub struct IdentifyArgs {}
#[derive(clap::Args)]
pub struct ReadArgs {}
#[derive(clap::Args)]
pub struct WriteArgs {}
pub fn discover(_a: DiscoverArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
pub fn identify(_a: IdentifyArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
pub fn read(_a: ReadArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
pub fn write(_a: WriteArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
